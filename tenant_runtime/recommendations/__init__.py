"""The recommendation gate: tasks, the Architect's analysis, the model panel, the deliberator
and the gate's verdict."""
