# convnext-dense: one-command set-up, tests and demo. See README.md.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo demo-det demo-seg clean

install: $(STAMP)

# Re-runs only when the dependency lists or the install script change.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

# Segmentation demo: toy ADE20K-format shapes set, UperNet + ConvNeXt V2-atto from scratch,
# train (6-9 minutes on a shared 2-core CPU), then evaluate (mIoU / mAcc / aAcc), draw the
# predictions and the training-loss curve.
SEG_DEMO := configs/segmentation/demo_upernet_convnext_atto_toy.py
SEG_DEMO_WORK := work_dirs/demo_upernet_convnext_atto_toy
SEG_DEMO_ITERS := 1000

data/toy_ade/.done: convnext_dense/datasets/toy.py | install
	$(PY) -m convnext_dense.datasets.toy ade data/toy_ade --seed 0
	touch $@

demo-seg: install data/toy_ade/.done
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) tools/train.py $(SEG_DEMO) --work-dir $(SEG_DEMO_WORK)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) tools/test.py $(SEG_DEMO) \
	    $(SEG_DEMO_WORK)/iter_$(SEG_DEMO_ITERS).pth \
	    --work-dir $(SEG_DEMO_WORK) --show-dir $(SEG_DEMO_WORK)/show
	$(PY) tools/analysis/plot_loss.py $(SEG_DEMO_WORK) --out $(SEG_DEMO_WORK)/loss.png
	@echo "demo-seg: predictions drawn in $(SEG_DEMO_WORK)/show, loss curve in $(SEG_DEMO_WORK)/loss.png"

# Detection demo: toy COCO-format shapes set, Cascade Mask R-CNN + ConvNeXt V2-atto from
# scratch, train (about 10 minutes on 2 CPU cores), evaluate (COCO bbox / segm mAP), draw
# the predictions of the 50 validation images and the training-loss curve.
DET_DEMO := configs/detection/demo_cascade_convnext_atto_toy.py
DET_DEMO_WORK := work_dirs/demo_cascade_convnext_atto_toy
DET_DEMO_EPOCHS := 4
# One thread: on a shared 2-core machine two threads per process cost several times more.
DEMO_THREADS ?= 1

data/toy_coco/.done: convnext_dense/datasets/toy.py | install
	$(PY) -m convnext_dense.datasets.toy coco data/toy_coco --seed 0 --num-train 400 \
	    --num-val 50 --size 256 192
	touch $@

demo-det: install data/toy_coco/.done
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) tools/train.py $(DET_DEMO) --work-dir $(DET_DEMO_WORK)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(PY) tools/test.py $(DET_DEMO) $(DET_DEMO_WORK)/epoch_$(DET_DEMO_EPOCHS).pth \
	    --work-dir $(DET_DEMO_WORK) --show-dir $(DET_DEMO_WORK)/show
	$(PY) tools/analysis/plot_loss.py $(DET_DEMO_WORK) --out $(DET_DEMO_WORK)/loss.png
	@echo "demo-det: predictions drawn in $(DET_DEMO_WORK)/show, loss curve in $(DET_DEMO_WORK)/loss.png"

# the detection demo, then the segmentation demo
demo: demo-det demo-seg

clean:
	rm -rf $(VENV) work_dirs data/toy_*
