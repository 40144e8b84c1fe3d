"""A user's loss module whose import leaves a mark, to show when it is (and is not) imported."""

import os

import tensorflow as tf

with open(os.environ["LOSS_IMPORT_MARK"], "w") as mark:
    mark.write("imported")


def squared_error(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_true - y_pred), axis=-1)
