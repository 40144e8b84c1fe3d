"""The report for text (issue 19): token rows, their colours, the top rows and sample, and the token table vs numpy."""

import hashlib
import json
import shutil
from html.parser import HTMLParser

import keras
import numpy as np
import pyarrow as pa
import pytest

from pipeline.report import write_report
from tests.conftest import assert_close, by_key, read_output, run_on, save, tensor_column, write_parquet

VOCAB, LENGTH, ROWS = 25, 7, 40
RED, BLUE = (178, 24, 43), (33, 102, 172)


class _Rows(HTMLParser):
    """Each token row (its data-values and spans: class, title, style, text) and each token-table row's data-values."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.rows, self.table, self.headings, self._span, self._h3 = [], [], [], None, False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "token-row":
            self.rows.append({"values": json.loads(attrs["data-values"]), "spans": [], "after": len(self.headings)})
        elif tag == "span" and "token" in (attrs.get("class") or "").split():
            self._span = {**attrs, "text": ""}
            self.rows[-1]["spans"].append(self._span)
        elif tag == "tr" and "data-values" in attrs:
            self.table.append((len(self.headings), json.loads(attrs["data-values"])))
        elif tag == "h3":
            self._h3 = True
            self.headings.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._span = None
        if tag == "h3":
            self._h3 = False

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data
        if self._h3:
            self.headings[-1] += data


def _rgb(style: str) -> tuple[int, int, int]:
    code = style.split("background:#", 1)[1][:6]
    return tuple(int(code[i : i + 2], 16) for i in (0, 2, 4))


@pytest.fixture(scope="module")
def text_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    keras.utils.set_random_seed(19)
    rng = np.random.default_rng(19)
    ids_in = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, 4, mask_zero=True, name="emb")(ids_in)
    pooled = keras.layers.GlobalAveragePooling1D()(emb)
    model = keras.Model(ids_in, keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(5, activation="tanh")(pooled)))
    ids = rng.integers(1, VOCAB, size=(ROWS, LENGTH)).astype(np.int32)
    for i in range(ROWS):
        ids[i, LENGTH - i % 4 :] = 0
    write_parquet(tmp / "in/0.parquet", {"id": np.arange(ROWS), "tokens": ids, "label": np.arange(ROWS) % 2})
    (tmp / "vocab.txt").write_text("\n".join(["[PAD]"] + [f"w{i}" for i in range(1, VOCAB)]) + "\n")
    run_on(tmp, save(model, tmp), "--wrt", "layer", "--layer", "emb", "--method", "gradient_x_input", "--target",
           "predicted", "--group_column", "label", "--vocab", tmp / "vocab.txt", "--batch_size", "8", features="tokens")
    page = open(write_report(str(tmp / "out/g"), output=str(tmp / "r.html"), top=5, sample=4, seed=3), encoding="utf-8").read()
    return by_key(read_output(tmp / "out/g")), page, tmp


def test_top_rows_and_sample_are_numpys_ranking_and_the_seeded_hash(text_job):
    out, page, _ = text_job
    parsed = _Rows(page)
    scores = tensor_column(out, "token_scores__emb").astype(np.float64)
    sums = np.abs(scores).sum(axis=1)
    keys = out.column("id").to_numpy()
    top = [f"id={keys[i]}, label={keys[i] % 2}" for i in np.argsort(-sums, kind="stable")[:5]]  # the group column is kept
    rank = {int(k): int.from_bytes(hashlib.sha256(f"3|[{k}, {k % 2}]".encode()).digest()[:8], "big") for k in keys}
    sample = [f"id={k}, label={k % 2}" for k in sorted(keys, key=lambda k: rank[int(k)])[:4]]
    shown = [r["values"]["row"] for r in parsed.rows]
    assert shown == top + sample
    assert_close([r["values"]["abs_sum"] for r in parsed.rows[:5]], np.sort(sums)[::-1][:5], rtol=1e-12)
    assert "<script" not in page.lower()


def test_tokens_are_named_by_the_vocabulary_coloured_on_a_diverging_scale_and_padding_is_marked(text_job):
    out, page, _ = text_job
    parsed = _Rows(page)
    by_id = {int(k): i for i, k in enumerate(out.column("id").to_numpy())}
    scores, mask = tensor_column(out, "token_scores__emb"), tensor_column(out, "mask__emb")
    tokens = tensor_column(out, "tokens__emb")
    rows = [by_id[int(r["values"]["row"].split(",")[0].split("=")[1])] for r in parsed.rows]
    scale = max(np.abs(scores[i][mask[i] != 0]).max() for i in rows)
    for r, i in zip(parsed.rows, rows):
        # named from the summary's token table (the job's --vocab), which counts no padding: a pad id shows as its id
        assert [s["text"] for s in r["spans"]] == ["0" if t == 0 else f"w{t}" for t in tokens[i]]
        assert [("pad" in s["class"]) for s in r["spans"]] == (mask[i] == 0).tolist()
        for s, score, real in zip(r["spans"], scores[i], mask[i]):
            if not real:
                assert "background" not in s["style"] and s["title"].startswith("padding")
                continue
            t = min(abs(float(score)) / scale, 1.0)
            end = RED if score > 0 else BLUE
            want = tuple(round(255 + (c - 255) * t) for c in end)
            assert _rgb(s["style"]) == want, (s, score)
    ends = {_rgb(s["style"]) for r in parsed.rows for s in r["spans"] if "pad" not in s["class"]}
    assert RED in ends or BLUE in ends  # the largest |score| shown takes the end of the scale
    assert 'class="token-legend"' in page


def test_the_token_table_equals_numpy_over_the_output_overall_and_per_group(text_job):
    out, page, _ = text_job
    parsed = _Rows(page)
    scores, real = tensor_column(out, "token_scores__emb"), tensor_column(out, "mask__emb") != 0
    tokens, label = tensor_column(out, "tokens__emb"), out.column("label").to_numpy()
    headings = {h: n for n, h in enumerate(parsed.headings, 1)}

    def table(heading):
        return [v for n, v in parsed.table if n == headings[heading]]

    for heading, rows in (("Tokens by mean score, all rows", np.ones(len(out), bool)),
                          ("Tokens by mean score where label = 0", label == 0),
                          ("Tokens by mean score where label = 1", label == 1)):
        keep = real & rows[:, None]
        want = {int(t): (float(scores[keep][tokens[keep] == t].astype(np.float64).mean()), int((tokens[keep] == t).sum()))
                for t in np.unique(tokens[keep])}
        got = table(heading)
        assert sorted(v["id"] for v in got) == sorted(want)  # every token seen (fewer than the table's 2 x 20), no padding
        assert [v["mean"] for v in got] == sorted((v["mean"] for v in got), reverse=True)
        assert [v["count"] for v in got] == [want[v["id"]][1] for v in got]
        assert_close([v["mean"] for v in got], [want[v["id"]][0] for v in got], rtol=1e-6, atol=1e-12)


def test_without_a_summary_the_table_is_computed_from_the_output(text_job, tmp_path):
    out, page, job = text_job
    (source,) = job.glob("out/g-00000-of-*.parquet")
    shutil.copy(source, tmp_path / "g-00000-of-00001.parquet")  # the shard alone: no marker, no summary
    again = open(write_report(str(tmp_path / "g"), output=str(tmp_path / "r.html"), top=5, sample=4, seed=3),
                 encoding="utf-8").read()
    first, second = _Rows(page), _Rows(again)
    assert [r["values"] for r in second.rows] == [r["values"] for r in first.rows]
    overall = [v for n, v in first.table if n == first.headings.index("Tokens by mean score, all rows") + 1]
    assert [(v["id"], v["count"]) for _, v in second.table] == [(v["id"], v["count"]) for v in overall]
    assert_close([v["mean"] for _, v in second.table], [v["mean"] for v in overall], rtol=1e-12)
    # no vocabulary there: tokens are shown by id
    assert {s["text"] for r in second.rows for s in r["spans"]} <= {str(t) for t in range(VOCAB)}


def test_padding_the_model_used_is_coloured_with_its_score_and_padding_it_ignored_is_not():
    """A model that drops the mask (a Conv1D after the embedding) reads its padding: that part of the attribution
    is shown, inside the padding's dashed border, where a zero one stays uncoloured."""
    from pipeline.report.text import colour, row_html

    page = row_html("row 0", np.array([0.5, -0.25, 0.0]), np.array([1, 0, 0]), np.array([4, 0, 0]), {4: "good"}, 1.0)
    spans = page.split("<span")[2:]  # after the row label
    assert 'title="good (position 0): 0.5"' in spans[0] and colour(0.5, 1.0) in spans[0]
    assert 'class="token pad"' in spans[1] and "padding the model used): -0.25" in spans[1]
    assert colour(-0.25, 1.0) in spans[1] and "dashed" in spans[1]
    assert 'title="padding (position 2)"' in spans[2] and "background" not in spans[2]
    from pipeline.report.text import legend_html

    assert "dashed: padding, coloured where the model used it)" in legend_html(1.0)  # not "no attribution"
