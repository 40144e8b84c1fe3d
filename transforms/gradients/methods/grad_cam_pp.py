"""`grad_cam_pp`: Grad-CAM++ (Chattopadhyay et al. 2017), as xplique 2.0.2's `GradCAMPP`: Grad-CAM's map with
each feature map weighted by the mean of alpha * relu(gradient), alpha = g^2 / (2 g^2 + g^3 * mean(map))."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.methods.grad_cam import GradCAM

EPSILON = 1e-4  # xplique's: added where the denominator is 0 (the numerator then is 0 too)


class GradCAMPP(GradCAM):
    name = "grad_cam_pp"

    @staticmethod
    def weights(gradients, maps):
        square, cube = tf.pow(gradients, 2), tf.pow(gradients, 3)
        average = tf.reduce_mean(maps, axis=(1, 2), keepdims=True)
        denominator = 2.0 * square + cube * average
        denominator += tf.cast(denominator == 0, tf.float32) * EPSILON
        alphas = square / denominator * tf.nn.relu(gradients)
        return tf.reduce_mean(alphas, axis=(1, 2), keepdims=True)
