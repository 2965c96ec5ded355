"""The decoder's argument rates come from the model's own synopses (the GGUF key export
writes), so a machine without csound-doc still judges argument slots."""

from csound_assistant.constants import GGUF_SYNOPSES
from csound_assistant.opcode_args import ArgForms
from csound_assistant.opcode_reference import OpcodeReference

# a made-up opcode whose second argument is a-rate only, and a real one
SYNOPSES = {"emuls": ["ares emuls kamp, asig"], "oscili": ["ares oscili xamp, xcps [, ifn]"]}


def test_argument_rates_come_from_the_gguf_without_a_manual(no_manual):
    args = ArgForms.from_gguf({GGUF_SYNOPSES: OpcodeReference(SYNOPSES).to_gguf()})
    assert args is not None
    assert args.refuses("emuls", ("a",), 1, "k")  # asig takes only audio
    assert not args.refuses("emuls", ("a",), 1, "a")
    assert args.only_audio("emuls", ("a",), 1)
    assert not args.refuses("oscili", ("a",), 0, "k")


def test_without_gguf_synopses_or_manual_no_slot_is_judged(no_manual):
    assert ArgForms.from_gguf({}) is None
