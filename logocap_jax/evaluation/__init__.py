"""Evaluation: COCO-format data sets through the Predictor, pycocotools scoring, and the
local-search upper bound."""
