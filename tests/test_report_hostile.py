"""The report is data: hostile strings wherever they reach the page are escaped, its anchors are slugs, and no script runs.

Two real jobs over real saved Keras models put hostile strings where a model and a
table put them: model input and output names (so the gradient, prediction, norm and
ig_delta column names), key column names and values, feature column names, group
values, and the rejected-row reasons that name a column. The files the report reads
besides the shards (the metadata, `<output>-summary.json`, the `_SUCCESS` marker, the
rejected rows, an influence output) are then crafted with hostile strings too, as an
attacker who can write them would.
"""

import glob
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import CSP, slug, write_report
from tests.conftest import run_job, save, write_parquet
from transforms.contract import column_entry, columns_metadata

FORMS = (
    '"><img src=x onerror="document.title=\'PWNED\'" data-at="{}">',  # out of a double-quoted attribute
    "'><svg onload=\"document.title='PWNED'\" data-at=\"{}\">",  # out of a single-quoted one (data-values)
    "<script>document.title='PWNED'</script><i data-at=\"{}\">",  # in text (Keras refuses '/' in names)
)


def hostile(place: str, form: int) -> str:
    return FORMS[form].format(place)


# Where each hostile string is put; every one must reach the page, escaped.
INPUT = hostile("model-input", 0)
OUTPUT = hostile("model-output", 1)
KEY = hostile("key-name", 2)
KEY_VALUE = hostile("key-value", 2)
FEATURE = hostile("feature", 0)
FEATURE_2 = hostile("feature-2 $\\frac{$", 1)  # and text that matplotlib would take as broken mathtext
GROUP_VALUES = (hostile("group-a", 2), hostile("group-b", 0))
TAB_KEY = hostile("tabular-key", 1)
META = {k: hostile(f"meta-{k}", i % 3) for i, k in enumerate(("model_path", "model_sha256", "batch_size", "version", "weights"))}
SPEC_KEY, SPEC_VALUE = hostile("spec-key", 0), hostile("spec-value", 2)
MARKER = {k: hostile(f"marker-{k}", i % 3) for i, k in enumerate(("rows_in", "rows_out", "rows_rejected", "finished"))}
STAGE, REASON = hostile("stage", 1), hostile("reason", 2)
SUMMARY_BLOCK, SUMMARY_FEATURE = hostile("summary-block", 0), hostile("summary-feature", 1)
SUMMARY_GROUP_COLUMN, SUMMARY_GROUP = hostile("summary-group-column", 2), hostile("summary-group", 0)
SUMMARY_TOP_KEY, SUMMARY_TOP_VALUE = hostile("summary-top-key", 1), hostile("summary-top-value", 2)
QUERY_KEY, QUERY_VALUE, TRAIN_KEY = hostile("query-key", 0), hostile("query-value", 1), hostile("train-key", 2)
TOKENS = tuple(hostile(f"token-{i}", i % 3) for i in range(9))  # a --vocab's strings, drawn as the text rows' tokens
TEXT_KEY_VALUE, TEXT_GROUP = hostile("text-key-value", 1), hostile("text-group", 2)

ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "nav", "a", "section", "h2", "h3", "p",
                "figure", "img", "figcaption", "table", "thead", "tbody", "tr", "th", "td", "details", "summary", "pre", "div", "span"}
ALLOWED_ATTRIBUTES = {"lang", "charset", "http-equiv", "content", "href", "id", "class", "data-chart", "data-values",
                      "data-count", "alt", "src", "style", "title", "colspan"}
ANCHOR = re.compile(r"[a-z0-9][a-z0-9-]*")


def _rewrite(path: str, change) -> None:
    """Replace a Parquet file by `change(table)`, in place (the marker still lists it)."""
    table = change(pq.read_table(path))
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def hostile_outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)

    # Job A: an image input with a hostile name, and two heads, one with a hostile name (outputs named by dict keys:
    # a layer's name must be a TensorFlow scope name); integrated gradients per head, so ig_delta__<head> too.
    image = keras.Input((4, 4, 1), name=INPUT)
    vector = keras.Input((3,), name="vec")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(image), vector])
    model = keras.Model([image, vector], {OUTPUT: keras.layers.Dense(1)(joined), "plain": keras.layers.Dense(2)(joined)})
    n = 24
    images = rng.random((n, 16), dtype=np.float32)
    write_parquet(tmp / "a/in/0.parquet", {
        KEY: [f"{KEY_VALUE}{i}" for i in range(n)],
        INPUT: pa.array([None if i in (3, 7) else row.tolist() for i, row in enumerate(images)], pa.list_(pa.float32())),
        "vec": rng.random((n, 3), dtype=np.float32),
    })
    run_job("--input", tmp / "a/in", "--output", tmp / "a/out/g", "--model", save(model, tmp / "a"), "--keep_columns", KEY,
            "--target", "per_output", "--method", "integrated_gradients", "--steps", "4", "--emit", "predictions,norm",
            "--batch_size", "8")

    # Job B: tabular, hostile feature column names, grouped by a column of hostile values.
    tabular = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="tanh"), keras.layers.Dense(1)])
    m = 40
    write_parquet(tmp / "b/in/0.parquet", {
        TAB_KEY: [f"{TAB_KEY}{i}" for i in range(m)], "grp": [GROUP_VALUES[i % 2] for i in range(m)],
        FEATURE: rng.normal(size=m), FEATURE_2: rng.normal(size=m),
    })
    run_job("--input", tmp / "b/in", "--output", tmp / "b/out/g", "--model", save(tabular, tmp / "b"),
            "--feature_columns", f"{FEATURE},{FEATURE_2}", "--keep_columns", TAB_KEY, "--group_column", "grp")

    # Job C: text (--wrt layer at an embedding), a vocabulary of hostile tokens, hostile key and group values.
    ids_in = keras.Input((5,), dtype="int32", name="ids")
    embedded = keras.layers.Embedding(len(TOKENS), 3, mask_zero=True, name="emb")(ids_in)
    text = keras.Model(ids_in, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(embedded)))
    ids = rng.integers(1, len(TOKENS), size=(12, 5)).astype(np.int32)
    ids[::3, -2:] = 0
    write_parquet(tmp / "c/in/0.parquet", {"doc": [f"{TEXT_KEY_VALUE}{i}" for i in range(12)], "ids": ids,
                                           "grp": [TEXT_GROUP if i % 2 else "plain" for i in range(12)]})
    (tmp / "c/vocab.txt").write_text("\n".join(TOKENS) + "\n")
    run_job("--input", tmp / "c/in", "--output", tmp / "c/out/g", "--model", save(text, tmp / "c"), "--keep_columns", "doc",
            "--feature_columns", "ids", "--wrt", "layer", "--layer", "emb", "--method", "gradient_x_input",
            "--group_column", "grp", "--vocab", tmp / "c/vocab.txt")

    # Crafted files, as someone who can write beside the output would write them.
    a = str(tmp / "a/out/g")
    shard = glob.glob(a + "-00000-of-*.parquet")[0]
    metadata = {f"beam_gradients.{k}".encode(): v.encode() for k, v in META.items()}
    # the class column a spec names: the kept key of hostile values, so the confusion table's classes are hostile too
    metadata[b"beam_gradients.spec"] = json.dumps({SPEC_KEY: SPEC_VALUE, "target": SPEC_VALUE, "class_column": KEY}).encode()
    _rewrite(shard, lambda t: t.replace_schema_metadata({**(t.schema.metadata or {}), **metadata}))
    rejected = glob.glob(a + "_rejected-00000-of-*.parquet")[0]
    crafted = lambda t: pa.Table.from_pylist([{**t.slice(0, 1).to_pylist()[0], "stage": STAGE, "reason": REASON}], t.schema)
    _rewrite(rejected, lambda t: pa.concat_tables([t, crafted(t)]))  # a row the job never wrote
    with open(a + "_SUCCESS") as fh:
        marker = json.load(fh)
    with open(a + "_SUCCESS", "w") as fh:
        json.dump({**marker, **MARKER}, fh)

    b = str(tmp / "b/out/g")
    pages = {"tabular": write_report(b, output=str(tmp / "b.html")),
             "text": write_report(str(tmp / "c/out/g"), output=str(tmp / "c.html"), top=4, sample=4)}  # the job's own summary, then a crafted one
    with open(b + "-summary.json") as fh:
        summary = json.load(fh)
    (name, entry), = summary["gradients"].items()
    entry["features"] = [SUMMARY_FEATURE, entry["features"][1]]
    entry["groups"] = {SUMMARY_GROUP: next(iter(entry["groups"].values())), **entry["groups"]}
    entry["top_by_norm"][0]["keys"] = {SUMMARY_TOP_KEY: SUMMARY_TOP_VALUE}
    summary["gradients"] = {SUMMARY_BLOCK: entry}
    summary["group_column"] = SUMMARY_GROUP_COLUMN
    summary["key_columns"] = [TAB_KEY, SUMMARY_TOP_KEY]
    with open(b + "-summary.json", "w") as fh:
        json.dump(summary, fh)

    # An influence output and its self-influence beside job A's: query and training keys from data.
    influence = str(tmp / "i/inf")
    rows = [{QUERY_KEY: QUERY_VALUE, "rank": r, "kind": kind, f"train__{TRAIN_KEY}": f"{TRAIN_KEY}{r}", "score": 1.0 / r}
            for kind in ("proponent", "opponent") for r in (1, 2)]
    write_parquet(influence + "-00000-of-00001.parquet", {k: [row[k] for row in rows] for k in rows[0]})
    write_parquet(influence + "_self_influence-00000-of-00001.parquet",
                  {f"train__{TRAIN_KEY}": [f"{TRAIN_KEY}{i}" for i in range(5)], "self_influence": rng.random(5)})
    # declared as the influence job declares its columns (beam_gradients.columns): the report reads kinds from there
    kinds = {QUERY_KEY: "key", "rank": "rank", "kind": "influence_kind", f"train__{TRAIN_KEY}": "train_key", "score": "score",
             "self_influence": "self_influence"}
    for path in (influence + "-00000-of-00001.parquet", influence + "_self_influence-00000-of-00001.parquet"):
        _rewrite(path, lambda t: t.replace_schema_metadata(columns_metadata(column_entry(c, kinds[c]) for c in t.column_names)))

    # Job W: weight-gradient norms per layer over job A's input (hostile keys); its spec crafted to name the hostile key
    # column as the label column, so the largest rows' captions and labels are hostile strings from the input.
    run_job("--input", tmp / "a/in", "--output", tmp / "w/out/g", "--model", tmp / "a/model.keras", "--keep_columns", KEY,
            "--target", "sum", "--output_name", "plain", "--wrt", "weights", "--weight_output", "norm", "--batch_size", "8")
    c = str(tmp / "w/out/g")
    c_shard = glob.glob(c + "-00000-of-*.parquet")[0]
    _rewrite(c_shard, lambda t: t.replace_schema_metadata(
        {**t.schema.metadata, b"beam_gradients.spec": json.dumps({"label_column": KEY}).encode()}))
    pages["weights"] = write_report(c, str(tmp / "a/in/*.parquet"), str(tmp / "w.html"), top=3)
    # An influence output keyed as job A's input (train__<hostile key>), whose --train names job W's shards: its page
    # draws the inputs, captioned with the hostile keys and the hostile labels.
    near = str(tmp / "n/inf")
    keys = [f"{KEY_VALUE}{i}" for i in (0, 1, 2, 5)]
    rows = [{KEY: keys[0], "rank": r, "kind": kind, f"train__{KEY}": keys[r], "score": 1.0 / r}
            for kind in ("proponent", "opponent") for r in (1, 2)]
    write_parquet(near + "-00000-of-00001.parquet", {k: [row[k] for row in rows] for k in rows[0]})
    write_parquet(near + "_self_influence-00000-of-00001.parquet", {f"train__{KEY}": keys, "self_influence": rng.random(4)})
    near_kinds = {KEY: "key", "rank": "rank", "kind": "influence_kind", f"train__{KEY}": "train_key", "score": "score",
                  "self_influence": "self_influence"}
    for path in (near + "-00000-of-00001.parquet", near + "_self_influence-00000-of-00001.parquet"):
        _rewrite(path, lambda t: t.replace_schema_metadata({
            **columns_metadata(column_entry(name, near_kinds[name]) for name in t.column_names),
            "beam_gradients.influence": json.dumps({"train": [c + "-*.parquet"]})}))
    pages["neighbours"] = write_report(near, str(tmp / "a/in/*.parquet"), str(tmp / "n.html"), top=2)

    pages["crafted-summary"] = write_report(b, output=str(tmp / "b-crafted.html"))
    pages["image"] = write_report(a, str(tmp / "a/in/*.parquet"), str(tmp / "a.html"), top=3, sample=2,
                                  influence=influence, self_influence=influence + "_self_influence")
    return tmp, {k: open(v, encoding="utf-8").read() for k, v in pages.items()}, pages


class _Parsed(HTMLParser):
    """Every start tag with its attributes (unescaped), and all text (unescaped)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def assert_safe(page: str, strings) -> None:
    """Only the report's own tags and attributes; anchors are slugs; each hostile string is on the page as data."""
    parsed = _Parsed(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS, {tag for tag, _ in parsed.tags} - ALLOWED_TAGS
    names = {name for _, attrs in parsed.tags for name in attrs}
    assert names <= ALLOWED_ATTRIBUTES, names - ALLOWED_ATTRIBUTES
    # An independent look at the raw text: no tag but the report's own opens anywhere, no handler attribute.
    assert set(t.lower() for t in re.findall(r"<\s*/?\s*([A-Za-z][A-Za-z0-9-]*)", page)) <= ALLOWED_TAGS
    for tag in re.findall(r"<[A-Za-z][^>]*>", page):  # attributes outside their (escaped) quoted values
        assert not re.search(r"\son[a-z]+\s*=", re.sub(r'"[^"]*"|\'[^\']*\'', '""', tag)), tag
    for s in strings:
        assert s not in page, s
    # Anchors: slugs, unique, and every link goes to one of them; images are embedded PNGs.
    ids = [attrs["id"] for _, attrs in parsed.tags if "id" in attrs]
    assert ids and all(ANCHOR.fullmatch(i) for i in ids), ids
    assert len(ids) == len(set(ids))
    hrefs = [attrs["href"] for _, attrs in parsed.tags if "href" in attrs]
    assert hrefs == [f"#{i}" for i in ids]  # the nav: one link per section, in order
    sources = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert sources and all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/=]+", s) for s in sources)
    # The policy comes first in <head>, before anything it governs.
    assert [t for t, _ in parsed.tags[:4]] == ["html", "head", "meta", "meta"]
    assert parsed.tags[3][1] == {"http-equiv": "Content-Security-Policy", "content": CSP}
    assert sum(1 for _, attrs in parsed.tags if attrs.get("http-equiv", "").lower() == "content-security-policy") == 1
    # Every hostile string reached the page, as text or in an attribute's value (JSON in data-values).
    text = "".join(parsed.text)
    values = " ".join(v for _, attrs in parsed.tags for v in attrs.values() if v)
    for s in strings:
        # (JSON in data-values, or in the raw metadata's JSON text)
        assert s in text or s in values or json.dumps(s)[1:-1] in values + text, f"never reached the page: {s}"


IMAGE_STRINGS = [INPUT, OUTPUT, KEY, KEY_VALUE, *META.values(), SPEC_KEY, SPEC_VALUE, *MARKER.values(), STAGE, REASON,
                 QUERY_KEY, QUERY_VALUE, TRAIN_KEY]
TABULAR_STRINGS = [TAB_KEY, FEATURE, FEATURE_2, *GROUP_VALUES]
WEIGHT_STRINGS = [KEY, KEY_VALUE]
NEIGHBOUR_STRINGS = [KEY, KEY_VALUE]
TEXT_STRINGS = [*TOKENS[1:], TEXT_KEY_VALUE, TEXT_GROUP]  # id 0 is padding: named by no table
CRAFTED_SUMMARY_STRINGS = [TAB_KEY, FEATURE_2, *GROUP_VALUES, SUMMARY_BLOCK, SUMMARY_FEATURE, SUMMARY_GROUP_COLUMN,
                           SUMMARY_GROUP, SUMMARY_TOP_KEY, SUMMARY_TOP_VALUE]


def test_hostile_strings_are_escaped_everywhere_and_anchors_are_slugs(hostile_outputs):
    _, pages, _ = hostile_outputs
    assert_safe(pages["image"], IMAGE_STRINGS)
    assert_safe(pages["tabular"], TABULAR_STRINGS)
    assert_safe(pages["crafted-summary"], CRAFTED_SUMMARY_STRINGS)
    assert_safe(pages["weights"], WEIGHT_STRINGS)
    assert_safe(pages["neighbours"], NEIGHBOUR_STRINGS)
    assert_safe(pages["text"], TEXT_STRINGS)
    image = _Parsed(pages["image"])
    ids = [attrs["id"] for _, attrs in image.tags if "id" in attrs]
    # A section per gradient head, the ig_delta of the hostile head, influence: anchored by a slug and its hash.
    gradient_ids = [i for i in ids if i.startswith("gradient-")]
    assert len(gradient_ids) == 4 and all(re.search(r"-[0-9a-f]{8}$", i) for i in gradient_ids)
    assert slug(f"ig_delta__{OUTPUT}") in ids and "influence" in ids and "self-influence" in ids and "rejected" in ids
    # The class section, its classes the hostile key values (the crafted spec's class column), as table cells.
    assert "predictions-and-classes" in ids
    confusion = re.findall(r'<table class="confusion">.*?</table>', pages["image"])[0]
    assert html.escape(f"{KEY_VALUE}0") in confusion and f"{KEY_VALUE}0" not in confusion
    # The weight-norm section's largest rows, with their inputs drawn and the hostile labels in their table.
    weights = _Parsed(pages["weights"])
    assert 'data-chart="weight-norm-inputs"' in pages["weights"] and f"{KEY_VALUE}" in "".join(weights.text)
    # The neighbours' and self-influence's inputs, drawn (job A's input by key), captioned by hostile keys.
    assert 'data-chart="influence-inputs"' in pages["neighbours"] and 'data-chart="self-influence-inputs"' in pages["neighbours"]
    assert '<table class="self-influence-labels">' in pages["neighbours"]
    # The page still says what the files say: the reason naming the hostile column, the crafted stage and reason.
    assert f"column {INPUT!r} is null" in "".join(image.text)
    assert STAGE in "".join(image.text) and REASON in "".join(image.text)
    assert MARKER["finished"] in "".join(image.text)


def test_slugs_are_stable_unique_and_plain():
    assert slug("gradient-x") == slug("gradient-x") and slug("a_b") != slug("a-b") != slug("A-B")
    assert re.fullmatch(r"gradient-img-src-x-onerror-document-titl-[0-9a-f]{8}", slug("gradient-" + INPUT))  # 40 letters, a hash
    assert re.fullmatch(r"[0-9a-f]{8}", slug("<>"))
    assert all(ANCHOR.fullmatch(slug(s)) for s in FORMS + ("", "é", "-", "x" * 500))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(path: str) -> tuple[str, str]:
    """The DOM after load (handlers and timers given 3 s of virtual time), and Chromium's log."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=3000", "--dump-dom", f"file://{path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def _title(dom: str) -> str:
    found = re.search(r"<title>(.*?)</title>", dom, re.S)
    return html.unescape(found.group(1)) if found else ""


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
def test_no_script_runs_in_headless_chromium(hostile_outputs, tmp_path):
    tmp, pages, paths = hostile_outputs
    # The detector works: the same payloads written raw into a page do set the title...
    raw = "".join(f"<p>{s}</p><p title='{s}'>x</p>" for s in FORMS)
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><head><title>clean</title></head><body>{raw}</body></html>")
    assert _title(_chromium(str(control))[0]) == "PWNED"
    # ...and the page's policy alone would stop them (defence in depth under the escaping).
    guarded = tmp_path / "guarded.html"
    guarded.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">'
                       f"<title>clean</title></head><body>{raw}</body></html>")
    dom, log = _chromium(str(guarded))
    assert _title(dom) == "clean" and "Content Security Policy" in log
    for kind, path in paths.items():
        dom, log = _chromium(path)
        title = _title(dom)
        assert title.startswith("beam-gradients report: ") and "PWNED" not in title, (kind, title)
        # Nothing was blocked (the page needs nothing the policy forbids), nothing failed to load, no console output.
        noise = [line for line in log.splitlines() if "CONSOLE" in line or "Content Security Policy" in line
                 or "Failed to load" in line or "net::ERR" in line]
        assert not noise, (kind, noise)
        # The DOM is the page's: the same tags and images as written, no element added by a handler.
        assert dom.count("<img") == pages[kind].count("<img") and dom.count("<section") == pages[kind].count("<section")
        assert "<svg" not in dom and "<script" not in dom


def test_bidirectional_controls_are_shown_as_code_points_not_obeyed():
    """Escaping leaves U+202E (right-to-left override) a control: a key holding it turned the rest of its line
    around on the page. Every such control is shown as its code point."""
    from pipeline.report.html import page

    text = page("key\u202e", ["<p>id=ab\u202ecd\u2066e\u200ff</p>"])
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 or c in "\u200e\u200f\u061c" for c in text)
    assert "<p>id=ab\\u202ecd\\u2066e\\u200ff</p>" in text and "<title>key\\u202e</title>" in text
