"""A user's own loss, named on the command line as tests.custom_losses:scaled_squared_error."""

import tensorflow as tf


def scaled_squared_error(y_true, y_pred):
    """Per-example loss: 3 * sum of squared errors over the last axis."""
    return 3.0 * tf.reduce_sum(tf.square(y_true - y_pred), axis=-1)
