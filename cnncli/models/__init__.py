"""Built-in classic CNNs, written the way the lecture notes draw them."""

from cnncli.models.classic import LeNet5, SimpleCNN

__all__ = ["LeNet5", "SimpleCNN"]
