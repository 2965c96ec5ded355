"""csound-assistant: fine-tune a code model on Csound and ship it as one GGUF file.

The stage folders at the top of the repository (base/, data/, train/, convert/, modelfiles/,
runtime/, eval/, editors/) are installed as sub-packages of this one namespace, for example
``csound_assistant.train`` is built from ``train/``; see pyproject.toml.
"""

__version__ = "0.1.0"
