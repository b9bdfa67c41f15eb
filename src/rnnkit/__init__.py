"""rnnkit: recurrent neural networks from scratch on NumPy, with hand-written BPTT.

    rnnkit.nn          layers (RNN, LSTM, GRU, cells, Embedding, Linear, Dropout, loss)
    rnnkit.optim       optimisers, clipping, schedules
    rnnkit.gradcheck   finite-difference gradient checking
    rnnkit.models      LanguageModel
    rnnkit.train       the Trainer
    rnnkit.generate    sampling
"""
__version__ = "0.1.0"
