"""`magistrate redact`: JSON out, JSON Lines in and out, custom profiles, clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    return subprocess.run([sys.executable, "-m", "control_plane", "redact", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_help():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: magistrate redact" in result.stdout and "--profile" in result.stdout


def test_redacts_standard_input():
    text = "Mail ann@example.com or call 555-123-4567\n"
    result = run(stdin=text)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["text"] == "Mail [EMAIL_1] or call [PHONE_1]\n"
    assert out["entities"] == [
        {"type": "EMAIL", "start": 5, "end": 20, "placeholder": "[EMAIL_1]"},
        {"type": "PHONE", "start": 29, "end": 41, "placeholder": "[PHONE_1]"}]
    assert "ann@example.com" not in result.stdout + result.stderr


def test_jsonl():
    lines = [json.dumps("I am Maria Lopez"), "", json.dumps("DOB: 01/02/1990, 10.0.0.1")]
    result = run("--jsonl", "--profile", "aggressive", stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    outs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["text"] for o in outs] == ["I am [PERSON_1]", "DOB: [DOB_1], [IP_1]"]


def test_jsonl_refuses_a_line_that_is_not_a_json_string():
    stdin = json.dumps("a@example.com") + "\n" + '{"text": "b@example.com"}\n' + \
        json.dumps("c@example.com") + "\n"
    result = run("--jsonl", stdin=stdin)
    assert result.returncode == 2
    assert result.stderr.strip() == ("magistrate: line 2 is not a JSON string; each line must "
                                     'be one, such as "call me at 555-123-4567".')
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["[EMAIL_1]"]


def test_custom_profile():
    result = run("--profile", "custom", "--detector", "ssn", "--term", "Bluebird",
                 "--pattern", r"INC-\d+", stdin="bluebird INC-42 123-45-6789 a@example.com")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == "[TERM_1] [PATTERN_1] [SSN_1] a@example.com"


@pytest.mark.parametrize("args, message", [
    (["--profile", "paranoid"], "magistrate: unknown profile 'paranoid'; choose one of off, "
                                "standard, aggressive, custom."),
    (["--term", "x"], "magistrate: --detector, --term and --pattern go with --profile custom."),
    (["--profile", "custom", "--pattern", "a*"], "magistrate: Custom pattern 1 ('a*') can "
     "match an empty string; make it require at least one character (for example + instead "
     "of *)."),
    (["--profile", "custom", "--detector", "retina"], "magistrate: Unknown redaction detector "
     "retina; choose from email, phone, ssn, ein, card, person, address, ip, dob, name_pair."),
])
def test_bad_profiles_exit_2_with_one_sentence(args, message):
    result = run(*args, stdin="x")
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""


def test_a_pattern_that_times_out_is_reported():
    result = run("--profile", "custom", "--pattern", "(a+)+$", stdin="a" * 5000 + "b")
    assert result.returncode == 1
    assert "took longer than 50 ms" in result.stderr and result.stdout == ""
