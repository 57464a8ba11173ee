"""perturber.pipeline: from factor values to a store and back.

- factors (:mod:`.factors`), and where each is implemented
  (:mod:`.implementations`: the image ops of :mod:`.imageops`, the scene
  setters of :mod:`.scene`); plugins (:mod:`.plugins`);
- assets (:mod:`.assets`, :mod:`.meshes`, :mod:`.meshfiles` (files a mesh
  may read), :mod:`.morph`, :mod:`.surface`) and rendering (:mod:`.scene`);
- models (:mod:`.models`, :mod:`.weights` (sources and checksums),
  :mod:`.inference`, :mod:`.classes`) and the one
  engine (:mod:`.engine`), attacks (:mod:`.attack`);
- sweeps (:mod:`.spec`), the precompute (:mod:`.run`, :mod:`.tasks`,
  :mod:`.clusters`), the store (:mod:`.store`, :mod:`.names`) and its
  check (:mod:`.verify`);
- what a cube says (:mod:`.analysis`) and studies (:mod:`.studies`);
- the command line (:mod:`.cli`, :mod:`.commands`, :mod:`.options`);
  user YAML read with limits (:mod:`.yamlsafe`) and checked field by field
  (:mod:`.fields`); configuration (:mod:`.config`) and errors (:mod:`.errors`).
"""
