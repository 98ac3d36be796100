"""Saves a trained model and its outputs, for the cross-backend load test.

Run as `KERAS_BACKEND=<b> python -m tests.save_model_for_other_backend DIR`.
"""

import sys

import keras
import numpy as np
from keras import ops

from tests import model_zoo


def main(directory):
    keras.config.set_image_data_format("channels_last")
    model = model_zoo.train_a_little(model_zoo.functional_model())
    x = model_zoo.probe_inputs()
    np.save(f"{directory}/x.npy", x)
    np.save(
        f"{directory}/y.npy", ops.convert_to_numpy(model(x, training=False))
    )
    model.save(f"{directory}/model.keras")
    print("saved with", keras.config.backend())


if __name__ == "__main__":
    main(sys.argv[1])
