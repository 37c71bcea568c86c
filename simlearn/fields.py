"""Names of the fields that more than one package reads or writes, kept here so that each is spelled once.

A leaf module (no imports): the data modules write these fields and evaluation reads them, and neither may import
the other's heavy modules for a name.
"""

#: The field of a query/gallery test (In-Shop's official split): 1 for a gallery item, 0 for a query, −1 for an
#: item of any other split. The data writes it (:func:`simlearn.data.split_plan.plan_splits`), the evaluator
#: searches its queries against its gallery by it, and ``embeddings.npz`` carries it with the label fields.
GALLERY_FIELD = "is_gallery"

#: The field of a training batch with several views of each image (``data.views``): each row's view, 0 … views − 1.
#: The data writes it (:class:`simlearn.data.views.ViewMaker`), the label-free losses read it.
VIEW_FIELD = "view"

#: The embeddings of the test items' near-duplicate copies (the label-free metrics) among the outputs a model collects
#: beside the label fields.
COPY_EMBEDDINGS = "copy_embeddings"

#: What a batch (``image``, ``index``) or a file of embeddings (the run's ``embeddings.npz``, ``simlearn-embed``'s npz,
#: parquet and LanceDB rows) holds besides the label fields. The data refuses a label field of one of these names
#: (:meth:`simlearn.data.base.EmbeddingDataModule.setup`); the readers of those files take every other array of one
#: row per item as a label field.
NOT_LABEL_FIELDS = frozenset(
    {
        "image",
        "index",
        VIEW_FIELD,
        "embeddings",
        "codes",
        "labels",
        "class_names",
        "label_field",
        "split",
        "paths",
        "ckpt_path",
        "model_digest",
        COPY_EMBEDDINGS,
    }
)
