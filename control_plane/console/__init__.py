"""The operator console around the features: the tenant switcher and tabs (``nav``), the
platform and tenant overviews (``overview``), the recent-calls table (``calls``) and the
server-rendered SVG charts (``charts``). It reads what the areas store and changes nothing;
every state change stays with its area."""
