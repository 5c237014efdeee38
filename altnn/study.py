"""Published results of the study that altnn reproduces.

Source: a public set of notebooks built on the pytorch-ignite Fashion-MNIST example,
which train a ConvNet, an AdderNet, a spiking network and a spiking AdderNet for
12 epochs each. The numbers are the accuracies those notebooks print, in percent.
`steps` is the number of simulation time steps T for the spiking variants and None
for the others.

The study claims that spiking networks keep a narrow train-test gap while the ConvNet
and the AdderNet overfit with a gap that grows over the epochs.
"""

from dataclasses import dataclass

SOURCE = ("public notebooks built on the pytorch-ignite Fashion-MNIST example "
          "(final-epoch accuracy after 12 epochs)")
PUBLISHED_EPOCHS = 12


@dataclass(frozen=True)
class PublishedResult:
    """Final-epoch train and test accuracy, in percent, of one (variant, steps)."""

    variant: str
    steps: int | None
    train_accuracy: float
    test_accuracy: float

    @property
    def gap(self) -> float:
        """Train minus test accuracy, in percentage points."""
        return self.train_accuracy - self.test_accuracy


PUBLISHED_RESULTS = (
    PublishedResult("convnet", None, 96.06, 90.72),
    PublishedResult("addernet", None, 92.77, 89.21),
    PublishedResult("snn", 5, 87.24, 85.72),
    PublishedResult("snn", 10, 90.18, 88.71),
    PublishedResult("snn", 15, 89.60, 88.14),
    PublishedResult("snn", 20, 91.59, 89.50),
    PublishedResult("snn_adder", 5, 73.36, 72.98),
    PublishedResult("snn_adder", 10, 79.58, 78.82),
    PublishedResult("snn_adder", 15, 84.80, 83.68),
    PublishedResult("snn_adder", 20, 87.95, 86.40),
)

# Test accuracy in percent after each of the 12 epochs. The study publishes these
# curves for four (variant, steps) pairs only. The last value of each curve equals
# the test accuracy in PUBLISHED_RESULTS.
PUBLISHED_TEST_CURVES: dict[tuple[str, int | None], tuple[float, ...]] = {
    ("convnet", None): (88.30, 89.29, 90.08, 90.16, 91.21, 91.08,
                        91.42, 91.47, 90.93, 91.20, 91.08, 90.72),
    ("addernet", None): (81.56, 84.12, 86.39, 86.93, 88.07, 87.88,
                         88.09, 88.59, 88.62, 88.66, 89.05, 89.21),
    ("snn", 10): (77.77, 80.25, 82.37, 84.07, 85.47, 87.11,
                  85.96, 87.29, 86.91, 87.78, 87.41, 88.71),
    ("snn_adder", 10): (64.20, 67.97, 71.12, 72.37, 73.81, 78.27,
                        80.38, 78.47, 81.94, 81.25, 82.13, 78.82),
}


def find_published_result(variant: str, steps: int | None) -> PublishedResult | None:
    """Return the published result of (variant, steps), or None if the study has none."""
    for result in PUBLISHED_RESULTS:
        if result.variant == variant and result.steps == steps:
            return result
    return None
