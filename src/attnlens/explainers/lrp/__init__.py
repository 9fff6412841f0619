"""Layer-wise relevance propagation for vision transformers.

The model is never modified: the LRP methods recompute it from the parts its adapter names and
propagate relevance with explicit rules. The engine, one job per module:

* :mod:`.spec`: the model's parts resolved through the adapter (linear layers, norms, blocks, the
  head with its readout object), and the refusals of models that cannot be recomputed;
* :mod:`.functional`: the functional forward (plain operations, or AttnLRP's modified-gradient
  operations) and the activations it keeps;
* :mod:`.seeds`: where relevance starts (the objective's seed at the logits, or the gradient of a
  callable target), and the per-row gradients the methods need;
* :mod:`.relprop`: Chefer et al.'s explicit relprop (head, blocks, pixels);
* :mod:`.rules`: the relevance rules as batched tensor operations;
* :mod:`.engine`: one call's set-up (:func:`~.engine.prepare`).

The methods built on it, one module each:

* ``lrp`` (:mod:`.lrp`): full LRP down to the pixels (Chefer et al.'s reference rules);
* ``partial_lrp`` (:mod:`.partial_lrp`): LRP relevance of one layer's attention (Voita et al.);
* ``transformer_attribution`` and ``lrp_rollout`` (:mod:`.transformer_attribution`): Chefer et
  al., CVPR 2021;
* ``attnlrp`` (:mod:`.attnlrp`): AttnLRP (Achtibat et al., ICML 2024) as one modified-gradient pass.
"""
