"""altnn: train and compare conventional, adder and spiking networks on Fashion-MNIST."""

__version__ = "0.1.0"
