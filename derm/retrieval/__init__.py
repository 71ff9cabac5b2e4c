"""Retrieval: similar confirmed cases beside the diagnosis.

`similar` embeds an image with the ensemble's own pooled features, builds and caches the gallery of
confirmed cases (HAM10000 train, or the shipped test split) and searches it by cosine k-NN, leaving out the
query's own lesion and near-copies; `evaluate` measures that retrieval against the softmax
(`python -m derm similar-eval`) and writes the model card's section; `shipped_gallery` is the test split's
gallery that ships in weights/similar_gallery.npz; `cli` holds the `similar`, `similar-eval` and
`similar-gallery` commands. Importing this package loads nothing heavy.
"""
