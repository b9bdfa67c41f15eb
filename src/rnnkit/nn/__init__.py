"""Layers: each with params, grads, forward, backward, state_dict (see ``module.Module``)."""
from .basic import Dropout, Embedding, Linear
from .cells import GRUCell, LSTMCell, RNNCell
from .losses import SoftmaxCrossEntropy
from .module import Module
from .recurrent import GRU, LSTM, RNN

__all__ = ["Module", "Linear", "Embedding", "Dropout", "SoftmaxCrossEntropy",
           "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"]
