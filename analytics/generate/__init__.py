"""Synthetic CI workload: who pulls which image when, written as real log text.

Used by tests, the demo and the benchmarks. Deterministic by seed. ``workload.generate``
returns the ground truth in memory (every pull, the static references with when they were
named and removed, day labels); ``write`` turns it into files (logs in every format the
ingest reads, repositories of Dockerfiles/compose/workflow/k8s files, ``catalogue.json``
with layer composition and tag history, ``labels.json``).

Parameters (``workload.Params``) and the published facts they follow. The main source is
the Docker Hub workload study "Improving Docker Registry Design Based on Production
Workload Analysis" (Anwar et al., FAST '18): request popularity is heavy-tailed (a small
share of repositories receives most requests), traffic has strong daily and weekly cycles,
most requests are manifest/layer GETs of images already known, and a large share of layers
is shared between images.

* ``zipf_s`` (1.2): image choice within a role (job image, service, base, tool) is
  Zipf-like, so a few repositories get most pulls (heavy tail).
* ``activity_sigma`` (1.0), ``runs_per_office_hour`` (0.5): pipeline run rates are
  log-normal; a few busy pipelines drive most traffic.
* office-hour profile (local 8-19h, peaks 9-11h and 14-16h), ``weekend_factor`` (0.05),
  ``utc_offset`` per region (eu +1, us -5): the daily and weekly cycles.
* ``share_nightly`` (0.2): nightly pipelines run every day at a fixed early hour, weekends
  included. ``share_release`` (0.08), ``release_weekday`` (Thursday), ``release_runs``:
  weekly release trains, half of them deployments seen by the kubelet.
* ``adoptions_per_week`` (1.5 per region), ``new_pipelines_per_week`` (0.4): images
  adopted mid-history (a quarter of services and tools start unused), each named in a
  repository file at commit time and first run after ``adoption_delay_hours`` (mean 6 h).
* ``MIGRATIONS``, ``migration_share`` (0.7), ``migration_spread_days`` (14): moves to a
  newer tag of the same repository (python 3.11 -> 3.12 ...), spread over two weeks.
* ``move_weekday`` (Tuesday): official language images and internal ``latest`` images are
  rebuilt weekly, so their tags move to new digests (new top layers, same base layers).
* ``bursts_per_week`` (1 per region): retry storms and matrix rebuilds (10-30 runs in 90 min).
* ``static_coverage`` (0.85): share of image uses named in a repository file (the rest is
  `docker pull` in scripts).
* ``adhoc_per_office_hour``: pulls through the regional mirror seen only in its access log.
* ``present_probability``: share of pulls that find the image already on the runner
  (ephemeral GitHub runners never do; kubelet and Jenkins agents often do).

``expected.expected_demand`` gives a day's expected pulls per tag (the rates behind the
draw): the backtest bench scores warm sets against it and ranks the ``ideal`` strategy by it.

The generator is not tuned to any model: its parameters come from the facts above, and
the backtest reports whatever the model makes of it.
"""
