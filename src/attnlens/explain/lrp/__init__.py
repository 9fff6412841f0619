"""Layer-wise relevance propagation for vision transformers.

:mod:`~attnlens.explain.lrp.engine` recomputes an unmodified model from the parts its adapter
names and propagates relevance with explicit rules (:mod:`~attnlens.explain.lrp.rules`). The
methods built on it, one module each:

* ``lrp`` (:mod:`.lrp`): full LRP down to the pixels (Chefer et al.'s reference rules);
* ``partial_lrp`` (:mod:`.partial_lrp`): LRP relevance of one layer's attention (Voita et al.);
* ``transformer_attribution`` and ``lrp_rollout`` (:mod:`.transformer_attribution`): Chefer et
  al., CVPR 2021;
* ``attnlrp`` (:mod:`.attnlrp`): AttnLRP (Achtibat et al., ICML 2024) as one modified-gradient pass.
"""
