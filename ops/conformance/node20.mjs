// Node.js 20 (Debian's) lacks fs.globSync, which the suite imports by name; this hook hands
// the suite a copy of `fs` that adds it (the one use lists files; a readdir walk serves).
import { register } from "node:module";

register("./fs-resolve.mjs", import.meta.url);
