"""Attributions with respect to a layer's output (issue 19), against an independent eager computation per row.

Each model is built beside its `tail`: the same layer objects called by hand from
the attributed layer's activation to the output (masks passed explicitly), with a
GradientTape on the activation, one row at a time. The engine instead splits the
model by replacing the layer's call; the two must agree.
"""

import dataclasses

import numpy as np
import keras
import pytest
import tensorflow as tf

from tests.conftest import IG_DELTA_SCALE, assert_close, assert_tables_rounding_equal
from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras
from transforms.gradients.methods.steps import alphas_and_weights

RNG = np.random.default_rng(19)
VOCAB, LENGTH, WIDTH, CLASSES, ROWS = 30, 8, 6, 3, 5


def _tokens(rows=ROWS, pad=True):
    ids = RNG.integers(1, VOCAB, size=(rows, LENGTH)).astype(np.int32)
    if pad:  # rows of several lengths, padded with 0 at the end
        for i in range(rows):
            ids[i, LENGTH - i % 4 :] = 0
    return ids


@keras.saving.register_keras_serializable("tests")
class AddPosition(keras.layers.Layer):
    """A learned position embedding added to the token embedding (a Transformer's input)."""

    def build(self, shape):
        self.table = self.add_weight(shape=shape[1:], initializer="random_normal", name="table")

    def call(self, x):
        return x + self.table


def embedding_pooling():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True, name="emb")
    pool, head = keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(CLASSES, activation="softmax")
    model = keras.Model(ids, head(pool(emb(ids))))
    return model, "emb", lambda a, ids: head(pool(a, mask=ids != 0))


def conv1d_text():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, WIDTH, name="emb")
    conv = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="conv")
    pool, head = keras.layers.GlobalMaxPooling1D(), keras.layers.Dense(CLASSES)
    model = keras.Model(ids, head(pool(conv(emb(ids)))))
    return model, "emb", lambda a, ids: head(pool(conv(a)))


def recurrent(kind):
    def build():
        ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
        emb = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True, name="emb")
        rnn, head = kind(5, name="rnn"), keras.layers.Dense(CLASSES, activation="softmax")
        model = keras.Model(ids, head(rnn(emb(ids))))
        return model, "emb", lambda a, ids: head(rnn(a, mask=ids != 0))

    return build


def transformer():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, WIDTH, name="emb")
    position = AddPosition(name="position")
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="attention")
    add, norm = keras.layers.Add(), keras.layers.LayerNormalization(name="norm")
    pool, head = keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(CLASSES, activation="softmax")

    def rest(x):
        return head(pool(norm(add([x, attention(x, x)]))))

    model = keras.Model(ids, rest(position(emb(ids))))
    return model, "emb", lambda a, ids: rest(position(a))


def masked_embedding_conv1d():
    """A common text CNN: Conv1D takes no mask, so the model reads the padding's embeddings (the output does not
    depend on the mask); its attribution at the padding is part of the whole, not zero."""
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True, name="emb")
    conv = keras.layers.Conv1D(4, 3, padding="same", activation="tanh", name="conv")
    pool, head = keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(CLASSES, activation="softmax")
    model = keras.Model(ids, head(pool(conv(emb(ids)))))
    return model, "emb", lambda a, ids: head(pool(conv(a)))


def token_and_float():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    floats = keras.Input((3,), name="features")
    emb = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True, name="emb")
    pool, concat = keras.layers.GlobalAveragePooling1D(), keras.layers.Concatenate()
    head = keras.layers.Dense(CLASSES, activation="softmax")
    model = keras.Model([ids, floats], head(concat([pool(emb(ids)), floats])))
    return model, "emb", lambda a, ids, floats: head(concat([pool(a, mask=ids != 0), floats]))


def nested():
    inner_ids = keras.Input((LENGTH,), dtype="int32")
    inner_emb = keras.layers.Embedding(VOCAB, WIDTH, name="inner_emb")
    inner_dense = keras.layers.Dense(4, activation="tanh", name="inner_dense")
    encoder = keras.Model(inner_ids, inner_dense(inner_emb(inner_ids)), name="encoder")
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    flat, head = keras.layers.Flatten(), keras.layers.Dense(CLASSES, activation="softmax")
    model = keras.Model(ids, head(flat(encoder(ids))))
    return model, "inner_emb", lambda a, ids: head(flat(inner_dense(a)))


MODELS = {
    "embedding_pooling": embedding_pooling,
    "conv1d": conv1d_text,
    "lstm": recurrent(keras.layers.LSTM),
    "gru": recurrent(keras.layers.GRU),
    "transformer": transformer,
    "masked_embedding_conv1d": masked_embedding_conv1d,
    "token_and_float": token_and_float,
    "nested": nested,
}


def _inputs(model):
    xs = [_tokens()]
    if len(model.inputs) == 2:
        xs.append(RNG.normal(size=(ROWS, 3)).astype(np.float32))
    return xs


def _predicted(model, xs):
    return np.argmax(model(xs if len(xs) > 1 else xs[0]).numpy(), axis=1)


def _reference(model, layer, tail, xs, method, steps=16, rule="riemann_trapezoid", baseline=None):
    """Per row: the eager attribution at the layer (and f(x) - f(baseline) for IG), by the tail and a tape."""
    classes = _predicted(model, xs)
    activations = keras.Model(model.inputs, model.get_layer(layer).output) if layer in [l.name for l in model.layers] \
        else None
    rows, gaps = [], []
    for i in range(ROWS):
        row = [x[i : i + 1] for x in xs]
        if activations is not None:
            a = tf.constant(activations(row if len(row) > 1 else row[0]), tf.float32)
        else:  # nested: the inner embedding looked up by hand
            a = tf.gather(model.get_layer("encoder").get_layer(layer).embeddings, row[0])

        def score(at):
            return tail(at, *row)[0, classes[i]]

        def grad(at):
            with tf.GradientTape() as tape:
                tape.watch(at)
                value = score(at)
            return tape.gradient(value, at)

        if method == "gradient":
            rows.append(grad(a).numpy()[0])
        elif method == "gradient_x_input":
            rows.append((grad(a) * a).numpy()[0])
        else:
            b = tf.zeros_like(a) if baseline is None else baseline(a)
            alphas, weights = alphas_and_weights(rule, steps)
            total = sum(w * grad(b + alpha * (a - b)) for alpha, w in zip(alphas, weights))
            rows.append((total * (a - b)).numpy()[0])
            gaps.append(float(score(a) - score(b)))
    return np.stack(rows), np.array(gaps)


def _mask(model, xs):
    uses_mask = any(getattr(l, "mask_zero", False) for l in model.layers)
    return (xs[0] != 0).astype(np.int8) if uses_mask else np.ones(xs[0].shape, np.int8)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "integrated_gradients"])
def test_layer_attribution_equals_an_eager_tape_on_the_rest_of_the_network(name, method):
    model, layer, tail = MODELS[name]()
    xs = _inputs(model)
    settings = {"steps": 16} if method == "integrated_gradients" else {}
    spec = GradientSpec(wrt="layer", layer=layer, method=method, target="predicted", **settings)
    result = GradientEngine(from_keras(model), spec, batch_size=ROWS)(xs)
    want, gaps = _reference(model, layer, tail, xs, method)
    mask = _mask(model, xs)
    assert result["mask__" + layer].tolist() == mask.tolist()
    assert np.abs(want).max() > 1e-4
    assert_close(result[f"gradient__{layer}"], want, rtol=2e-4, atol=2e-6)  # the mask marks padding, zeroes nothing
    assert_close(result[f"token_scores__{layer}"], want.sum(-1), rtol=2e-4, atol=5e-6)
    if name == "masked_embedding_conv1d":  # the model reads its padding: the attribution there is not zero
        assert np.abs(result[f"token_scores__{layer}"][mask == 0]).max() > 1e-4
    elif (mask == 0).any():  # a model that honours its mask gives padding zero gradient by itself
        assert (result[f"token_scores__{layer}"][mask == 0] == 0).all()
    if method == "integrated_gradients":  # completeness at the layer
        assert_close(result["ig_delta"], result[f"gradient__{layer}"].reshape(ROWS, -1).sum(1) - gaps, atol=1e-5)
        if name != "conv1d":  # the scores add up to f(x) - f(b) (the ReLU and max pooling need more steps)
            assert_close(result[f"token_scores__{layer}"].sum(1), gaps, rtol=0.05, atol=2e-3)


def test_integrated_gradients_from_the_pad_tokens_embedding_is_complete():
    model, layer, tail = embedding_pooling()
    xs = _inputs(model)
    spec = GradientSpec(wrt="layer", layer=layer, method="integrated_gradients", steps=32, baseline="token:3",
                        target="predicted", token_score="l2")
    result = GradientEngine(from_keras(model), spec, batch_size=ROWS)(xs)
    table = model.get_layer(layer).embeddings
    want, gaps = _reference(model, layer, tail, xs, "integrated_gradients", steps=32,
                            baseline=lambda a: tf.broadcast_to(table[3], a.shape))
    want = want * _mask(model, xs)[:, :, None]
    assert_close(result[f"gradient__{layer}"], want, rtol=2e-4, atol=2e-6)
    assert_close(result[f"token_scores__{layer}"], np.linalg.norm(want, axis=-1), rtol=2e-4, atol=5e-6)
    assert_close(want.reshape(ROWS, -1).sum(1), gaps, rtol=0.02, atol=1e-4)
    assert np.abs(result["ig_delta"]).max() < 1e-3


def test_pad_token_zeroes_its_positions_without_a_keras_mask():
    model, layer, tail = conv1d_text()
    xs = _inputs(model)
    spec = GradientSpec(wrt="layer", layer=layer, target="predicted", pad_token=0)
    result = GradientEngine(from_keras(model), spec, batch_size=ROWS)(xs)
    want, _ = _reference(model, layer, tail, xs, "gradient")
    mask = (xs[0] != 0).astype(np.int8)
    assert 0 < mask.sum() < mask.size
    assert result["mask__emb"].tolist() == mask.tolist()
    assert_close(result["gradient__emb"], want * mask[:, :, None], rtol=2e-4, atol=2e-6)
    # --clip_norm clips what is written: the norm is measured after the padding is zeroed, not before
    visible = np.linalg.norm((want * mask[:, :, None]).reshape(ROWS, -1), axis=1)
    clip = float(np.median(visible))
    clipped = GradientEngine(from_keras(model), dataclasses.replace(spec, clip_norm=clip), batch_size=ROWS)(xs)["gradient__emb"]
    factor = np.minimum(1.0, clip / visible)[:, None, None]
    assert_close(clipped, want * mask[:, :, None] * factor, rtol=2e-4, atol=2e-6)


def test_smoothgrad_at_a_layer_is_the_mean_gradient_at_noisy_activations_and_ignores_the_batch_size():
    model, layer, _ = embedding_pooling()
    xs = _inputs(model)
    spec = GradientSpec(wrt="layer", layer=layer, method="smoothgrad", samples=8, noise=0.3, target="predicted")
    seeds = np.arange(ROWS, dtype=np.int64) * 7919
    whole = GradientEngine(from_keras(model), spec, batch_size=ROWS)(xs, [seeds])
    halves = [GradientEngine(from_keras(model), spec, batch_size=1)([x[i : i + 1] for x in xs], [seeds[i : i + 1]])
              for i in range(ROWS)]
    for key in ("gradient__emb", "token_scores__emb"):
        assert_close(np.concatenate([h[key] for h in halves]), whole[key], rtol=1e-5, atol=1e-7)
    plain = GradientEngine(from_keras(model), GradientSpec(wrt="layer", layer=layer, target="predicted"), ROWS)(xs)
    assert not np.allclose(whole["gradient__emb"], plain["gradient__emb"])  # the noise moved it


def test_integer_only_model_refused_with_inputs_names_wrt_layer_and_the_embedding():
    model, _, _ = embedding_pooling()
    with pytest.raises(SpecError) as err:
        GradientEngine(from_keras(model), GradientSpec(), batch_size=2)
    text = str(err.value.named({"wrt": "--wrt", "layer": "--layer"}))
    assert "--wrt layer --layer <name>" in text and "emb" in text and "\n" not in text


def test_unknown_layer_lists_the_layers_in_one_line():
    model, _, _ = nested()
    with pytest.raises(SpecError) as err:
        GradientEngine(from_keras(model), GradientSpec(wrt="layer", layer="nope"), batch_size=2)
    text = str(err.value)
    assert "'nope' is not a layer" in text and "inner_emb" in text and "inner_dense" in text and "\n" not in text


def test_a_layer_whose_output_does_not_reach_the_target_is_refused():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, WIDTH, name="emb")(ids)
    a = keras.layers.Dense(2, name="a")(keras.layers.Flatten()(emb))
    b = keras.layers.Dense(2, name="b")(keras.layers.Flatten()(emb))
    model = keras.Model(ids, {"a": a, "b": b})
    spec = GradientSpec(wrt="layer", layer="b", output_name="a")
    with pytest.raises(SpecError, match="does not reach"):
        GradientEngine(from_keras(model), spec, batch_size=2).trace()


def test_token_baseline_needs_wrt_layer():
    model, _, _ = token_and_float()
    with pytest.raises(SpecError, match="token:<id>"):
        GradientEngine(from_keras(model), GradientSpec(method="integrated_gradients", baseline="token:0"), 2)


@pytest.mark.parametrize("name", [n for n in MODELS if n != "transformer"])  # the transformer: its own test below
def test_every_model_kind_through_the_job_alike_across_batch_sizes_and_runners_and_a_rerun_to_the_byte(tmp_path, name):
    import pyarrow as pa

    from tests.conftest import by_key, read_output, run_job, save, write_parquet

    model, layer, _ = MODELS[name]()
    xs = [_tokens(12)] + ([RNG.normal(size=(12, 3)).astype(np.float32)] if len(model.inputs) == 2 else [])
    columns = {"id": np.arange(12), "tokens": pa.array(list(xs[0]), pa.list_(pa.int32()))}
    if len(xs) == 2:
        columns["features"] = xs[1]
    write_parquet(tmp_path / "in/a.parquet", columns, row_group_size=5)
    path = save(model, tmp_path)
    results = []
    # in-process at two batch sizes, in two worker processes (a third batch size), and the first run again
    multi = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    for run, (batch, extra) in enumerate([(3, []), (5, []), (4, multi), (3, [])]):
        run_job("--input", tmp_path / "in/a.parquet", "--output", tmp_path / f"r{run}/g", "--model", path,
                "--keep_columns", "id", "--wrt", "layer", "--layer", layer, "--method", "integrated_gradients",
                "--steps", "8", "--target", "predicted", "--batch_size", batch, *extra)
        results.append(by_key(read_output(tmp_path / f"r{run}/g")))
    for other in results[1:3]:  # other batch sizes and runners: equal to rounding
        assert_tables_rounding_equal(other, results[0], IG_DELTA_SCALE)
    assert results[3].equals(results[0])  # the first run again: the same bytes
    spec = GradientSpec(wrt="layer", layer=layer, method="integrated_gradients", steps=8, target="predicted")
    want = GradientEngine(from_keras(model), spec, batch_size=12)(xs)
    got = results[0].column(f"gradient__{layer}").combine_chunks().to_numpy_ndarray()
    assert_close(got, want[f"gradient__{layer}"], rtol=1e-5, atol=1e-7)


def test_a_transformer_encoder_through_the_job_token_scores_equal_an_eager_tape(tmp_path):
    """MultiHeadAttention, LayerNormalization and a custom position embedding (registered with Keras, so the
    job, in this process, loads it without --trust_model_code): token scores at the embedding's output equal
    the eager IG on the rest of the network summed over features, equal to rounding across batch sizes."""
    import pyarrow as pa

    from tests.conftest import by_key, read_output, run_job, save, write_parquet

    model, layer, tail = transformer()
    xs = [_tokens()]
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "tokens": pa.array(list(xs[0]), pa.list_(pa.int32()))},
                  row_group_size=2)
    path = save(model, tmp_path)
    outputs = []
    for batch in (2, 5):
        run_job("--input", tmp_path / "in/a.parquet", "--output", tmp_path / f"b{batch}/g", "--model", path,
                "--keep_columns", "id", "--wrt", "layer", "--layer", layer, "--method", "integrated_gradients",
                "--steps", "16", "--target", "predicted", "--batch_size", batch, "--emit", "predictions")
        outputs.append(by_key(read_output(tmp_path / f"b{batch}/g")))
    assert_tables_rounding_equal(outputs[1], outputs[0], IG_DELTA_SCALE)  # another batch size: equal to rounding
    out = outputs[0]
    attributions, gaps = _reference(model, layer, tail, xs, "integrated_gradients", steps=16)
    scores = out.column(f"token_scores__{layer}").combine_chunks().to_numpy_ndarray()
    assert_close(out.column(f"gradient__{layer}").combine_chunks().to_numpy_ndarray(), attributions, rtol=1e-4, atol=1e-6)
    assert_close(scores, attributions.sum(-1), rtol=1e-4, atol=1e-6)
    assert_close(out.column("ig_delta").to_numpy(), attributions.sum((1, 2)) - gaps, rtol=1e-3, atol=1e-6)
    assert out.column(f"tokens__{layer}").combine_chunks().to_numpy_ndarray().tolist() == xs[0].tolist()


def test_token_ids_beside_an_integer_padding_mask_are_the_ones_the_embedding_reads():
    """A BERT-style pair of (positions,) integer inputs: the ids and a 0/1 padding mask. The layer's tokens are the
    ids, which the Embedding reads; with two candidates there used to be no tokens column and no --pad_token."""
    ids = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    segments = keras.Input((LENGTH,), dtype="int32", name="segment_ids")  # read by an Embedding of its own
    padding = keras.Input((LENGTH,), dtype="int32", name="padding_mask")
    emb = keras.layers.Embedding(VOCAB, WIDTH, name="emb")
    summed = keras.layers.Add()([emb(ids), keras.layers.Embedding(2, WIDTH, name="segment_emb")(segments)])
    weights = keras.layers.Reshape((LENGTH, 1))(keras.layers.Rescaling(1.0)(padding))
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Multiply()([summed, weights]))
    model = keras.Model([ids, segments, padding], keras.layers.Dense(CLASSES)(pooled))
    tokens = _tokens()
    xs = [tokens, (np.arange(LENGTH) >= LENGTH // 2).astype(np.int32)[None].repeat(ROWS, 0), (tokens != 0).astype(np.int32)]
    spec = GradientSpec(wrt="layer", layer="emb", target="predicted", pad_token=0)
    result = GradientEngine(from_keras(model), spec, batch_size=ROWS)(xs)
    assert result["tokens__emb"].tolist() == tokens.tolist()
    assert result["mask__emb"].tolist() == (tokens != 0).astype(np.int8).tolist()


def test_pad_token_at_a_layer_with_fewer_positions_than_tokens_says_so():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    conv = keras.layers.Conv1D(4, 3, padding="valid", name="conv")(keras.layers.Embedding(VOCAB, WIDTH)(ids))
    model = keras.Model(ids, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(conv)))
    with pytest.raises(SpecError, match=r"^pad_token needs the tokens at layer conv's positions; the model's integer "
                                        r"inputs are tokens \(8,\): a layer that changes the number of positions"):
        GradientEngine(from_keras(model), GradientSpec(wrt="layer", layer="conv", pad_token=0), batch_size=ROWS)
