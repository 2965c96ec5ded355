"""Stage 6, evaluate and improve: self-training on the sandbox's verdicts
(``csound-assistant improve self-train``). It samples through the runtime, judges like the eval
and trains with the train stage, so it sits above all three."""
