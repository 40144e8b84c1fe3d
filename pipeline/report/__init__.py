"""`beam-gradients report OUTPUT_PREFIX`: one self-contained HTML page about a job's output.

Saliency maps for image-shaped gradients (the input beside its heat map, and
an overlay; Grad-CAM maps over their images), token rows coloured by their scores and a
token table for text, feature-importance bars for tabular ones (per output and group),
the norm histogram, rejected rows by stage and reason, the run's metadata, and
where such columns or outputs exist: the weight-gradient ranking, integrated-gradient
completeness gaps, influence neighbours and self-influence. Which sections a page
has comes from the output's declared columns (`beam_gradients.columns`, see
transforms/contract.py), never from column names. Figures are PNGs embedded as
base64, so the page needs no network. The output is streamed table by table, never
loaded whole; dataset-wide numbers come from the job's `<output>-summary.json`
(computed by the same combiner here, streaming, where an output has none).

The package, by role: `passes` (streaming passes over outputs and inputs), `figures`
(matplotlib), `html` (escaping, anchors, the CSP), one module per page kind (`main`,
`influence`, `rejected`), `text` (token rows and the token table), `overlay` (Grad-CAM maps
over their images), `sections` (those every kind shows), `describe` (a run's spec in
words: which settings apply, what was taken) and `build` (the page and the command).
"""

from pipeline.report.build import main, write_demo_report, write_report
from pipeline.report.html import CSP, slug

__all__ = ["CSP", "main", "slug", "write_demo_report", "write_report"]
