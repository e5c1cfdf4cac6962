"""The train function (GRU, LSTM, PROPHET by MODEL_TYPE); `handle` is the routing table's handler."""
from flts.train.handler import handle

__all__ = ["handle"]
