"""Word-level language modelling with plastic LSTMs (the paper's Penn Treebank experiment).

``corpus`` reads PTB-style folders, ``model`` holds the plastic LSTM and the parameter matching,
``trainer`` the BPTT training and perplexity evaluation, ``cli`` the command lines.
"""

from bpm_agents.lm.corpus import Corpus, CorpusError, Vocabulary, batchify
from bpm_agents.lm.model import (
    VARIANTS,
    LanguageModel,
    LMConfig,
    LSTMState,
    PlasticLSTMCell,
    config_parameters,
    match_hidden_size,
    matched_configs,
)
from bpm_agents.lm.trainer import PRESETS, TrainConfig, evaluate, run_training

__all__ = [
    "PRESETS",
    "VARIANTS",
    "Corpus",
    "CorpusError",
    "LMConfig",
    "LSTMState",
    "LanguageModel",
    "PlasticLSTMCell",
    "TrainConfig",
    "Vocabulary",
    "batchify",
    "config_parameters",
    "evaluate",
    "match_hidden_size",
    "matched_configs",
    "run_training",
]
