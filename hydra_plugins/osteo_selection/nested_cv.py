"""``hydra/sweeper=nested_cv``: nested, grouped cross-validation as one multirun.

``osteo-train experiment=knee_select data=folder data.root=DIR`` (the experiment sets
``hydra.mode: MULTIRUN`` and this sweeper) runs, through the configured launcher (in this
process, local processes, or SLURM jobs):

1. every recipe on every inner fold of every outer fold (inner runs, which never see their
   outer test fold);
2. per outer fold, the recipe its inner runs chose, trained on the outer training part and
   tested on the outer fold (outer runs);
3. for fitted-head recipes, the permutation test and the learning curve, in this process from
   the outer runs' files; for others, ``job_permutations`` reruns of the outer runs with
   shuffled labels (``data.permute_labels``).

It writes ``<sweep>/selection/{selection.json,selection.md,predictions.csv}``
(:mod:`osteolightning.selection.nested`) and prints the table.

Killed? The same command with ``resume=auto`` continues the multirun of the same overrides
(or the one ``hydra.sweep.dir=`` names), as the grid sweeper does: each job keeps its number and
folder; finished jobs are skipped, killed ones continue from their ``last.ckpt``, the rest run
(:func:`osteolightning.runs.sweep_resume.plan_job`). The jobs are planned in the same order, so
job numbers match.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class NestedCVConf:
    _target_: str = "hydra_plugins.osteo_selection.nested_cv.NestedCVSweeper"
    #: the candidates: [{name: ..., overrides: [...]}, ...]
    recipes: list[Any] = field(default_factory=list)
    #: names of recipes to leave out of this sweep (e.g. [finetune_lite0_160] on a CPU)
    exclude: list[str] = field(default_factory=list)
    outer_folds: int = 5
    inner_folds: int = 3
    #: the metric of the pooled inner predictions that chooses a recipe (higher is better)
    select_by: str = "auroc_macro"
    #: label shuffles of the permutation test (fitted-head recipes: in this process)
    permutations: int = 200
    #: outer reruns with shuffled labels when a chosen recipe is not a fitted-head one
    job_permutations: int = 0
    #: training shares of the learning curve ([] : none)
    learning_curve: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    n_resamples: int = 1000
    #: also run every recipe on every outer fold: a per-recipe table (plain grouped K-fold CV of
    #: each recipe, with its permutation test for fitted-head recipes) beside the nested estimate
    every_recipe: bool = False
    #: label shuffles of each recipe's permutation test in that table (null: ``permutations``)
    recipe_permutations: int | None = None
    #: a recipe the others are compared with, image by image (paired bootstrap, DeLong, Holm);
    #: needs every_recipe. Writes selection/study.md (e.g. the record alone: does the image add?)
    compare_to: str | None = None
    #: shuffles of the conditional permutation test of the image, for every recipe that fuses
    #: image features with covariates (the image shuffled among knees, records kept)
    image_permutations: int = 0


ConfigStore.instance().store(group="hydra/sweeper", name="nested_cv", node=NestedCVConf)


class NestedCVSweeper(Sweeper):
    """See the module docstring."""

    def __init__(
        self,
        recipes: list[Any],
        exclude: list[str] | None = None,
        outer_folds: int = 5,
        inner_folds: int = 3,
        select_by: str = "auroc_macro",
        permutations: int = 200,
        job_permutations: int = 0,
        learning_curve: list[float] | None = None,
        n_resamples: int = 1000,
        every_recipe: bool = False,
        recipe_permutations: int | None = None,
        compare_to: str | None = None,
        image_permutations: int = 0,
    ) -> None:
        from osteolightning.selection.nested import NestedPlan

        items = OmegaConf.to_container(recipes) if OmegaConf.is_config(recipes) else recipes
        if not isinstance(items, list) or not all(
            isinstance(r, dict) and set(r) == {"name", "overrides"} for r in items
        ):
            from osteolightning.errors import ConfigError

            raise ConfigError(
                "Expected `hydra.sweeper.recipes` to be a list of {name: ..., overrides: [...]}, "
                f"but got {items!r}."
            )
        named = {str(r["name"]): [str(o) for o in r["overrides"]] for r in items}
        unknown = sorted(set(map(str, exclude or ())) - set(named))
        if unknown:
            from osteolightning.errors import ConfigError

            raise ConfigError(
                f"`hydra.sweeper.exclude` names {unknown}, which are not recipes of this sweep; "
                f"its recipes are {sorted(named)}."
            )
        named = {n: o for n, o in named.items() if n not in set(map(str, exclude or ()))}
        self.plan = NestedPlan(
            named,
            int(outer_folds),
            int(inner_folds),
            str(select_by),
        )
        self.permutations, self.job_permutations = int(permutations), int(job_permutations)
        self.fractions = [float(f) for f in (learning_curve or [])]
        self.n_resamples = int(n_resamples)
        self.every_recipe = bool(every_recipe)
        self.recipe_permutations = (
            self.permutations if recipe_permutations is None else int(recipe_permutations)
        )
        if compare_to is not None and (compare_to not in named or not every_recipe):
            from osteolightning.errors import ConfigError

            raise ConfigError(
                f"`hydra.sweeper.compare_to` must name a recipe of this sweep ({sorted(named)}) "
                f"and needs every_recipe=true, but got {compare_to!r} "
                f"(every_recipe={every_recipe})."
            )
        self.compare_to, self.image_permutations = compare_to, int(image_permutations)
        self.next_job = 0

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.resuming = False
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _launch(self, jobs: list[Any], arguments: list[str]) -> dict[Any, Path]:
        """Run ``jobs`` (base ``arguments`` first, the job's own overrides after) and return
        each job's run directory (a resumed sweep skips finished jobs: their folder is kept)."""
        from hydra_plugins.osteo_sweeps._grid import job_dir, launch
        from osteolightning.runs import sweep_resume

        dirs: dict[Any, Path] = {}
        planned = []
        for i, job in enumerate(jobs):
            num, overrides = self.next_job + i, [*arguments, *job.overrides]
            if self.resuming:
                folder = job_dir(self, overrides, num)
                plan = sweep_resume.plan_job(folder, overrides)
                log.info(f"Job {num} ({job.stage} {job}): {plan.action}, {plan.reason}.")
                overrides = sweep_resume.prepare_job(plan, overrides)
                if overrides is None:
                    dirs[job] = folder
                    continue
            planned.append((job, list(overrides), num))
        self.next_job += len(jobs)
        returns = launch(self.launcher, [(o, n) for _, o, n in planned])
        for (job, _, _), ret in zip(planned, returns, strict=True):
            if ret.status == JobStatus.FAILED:
                log.error(f"{job.stage} job {job} failed: {ret._return_value}")
            dirs[job] = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        return dirs

    def _resume(self, arguments: list[str]) -> list[str]:
        """Strip ``resume=`` from ``arguments``; with ``resume=auto``, point the sweep at the
        multirun it continues (if any)."""
        from hydra_plugins.osteo_sweeps._grid import previous_sweep, redirect_sweep_dir
        from osteolightning.runs import sweep_resume

        arguments, resume = sweep_resume.strip_resume(arguments)
        if resume is None:
            return arguments
        if resume != "auto":
            from osteolightning.errors import ConfigError

            raise ConfigError(
                f"A nested cross-validation takes resume=auto (continue the killed sweep of "
                f"these overrides), not resume={resume}."
            )
        previous = previous_sweep(self.config)
        if previous is None:
            log.info(
                f"resume=auto: no multirun of these overrides in "
                f"{Path(str(self.config.hydra.sweep.dir)).parent}; a fresh sweep starts."
            )
        else:
            redirect_sweep_dir(self.config, previous, self.launcher)
            self.resuming = True
            log.info(f"resume=auto: continuing the nested cross-validation in {previous}.")
        return arguments

    def sweep(self, arguments: list[str]) -> Any:
        from osteolightning.runs.failures import user_errors

        # a refused sweep (a resume that does not fit, job folders of another sweep) ends with
        # its message alone and exit status 1, as a refused run does
        with user_errors(f"osteo-{self.config.get('task_name', 'train')}"):
            return self._sweep(list(arguments))

    def _sweep(self, arguments: list[str]) -> Any:
        from osteolightning.runs import sweep_resume
        from osteolightning.selection.nested import choose, finished, report

        arguments = self._resume(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if not self.resuming and sweep_dir.exists():  # once, before any job starts
            from hydra_plugins.osteo_sweeps._grid import check_fresh_jobs, job_dir

            jobs = self.plan.inner_jobs()
            check_fresh_jobs(
                sweep_dir,
                (job_dir(self, [*arguments, *j.overrides], n) for n, j in enumerate(jobs)),
            )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sweep_resume.save_multirun(sweep_dir, self.config)
        plan = self.plan
        inner = self._launch(plan.inner_jobs(), arguments)
        chosen, scores = choose(plan, inner)
        for k, recipe in chosen.items():
            log.info(f"Outer fold {k}: the inner folds chose `{recipe}` ({scores[k]}).")
        outer_jobs = [plan.outer_job(k, chosen[k]) for k in range(plan.outer_folds)]
        # every_recipe: the other recipes on every outer fold too (after the chosen ones, so the
        # chosen runs keep their job numbers)
        others = [
            plan.outer_job(k, name)
            for name in (plan.recipes if self.every_recipe else ())
            for k in range(plan.outer_folds)
            if chosen[k] != name
        ]
        launched = self._launch(outer_jobs + others, arguments)
        outer = {job.outer: launched[job] for job in outer_jobs}
        if not all(finished(d) for d in outer.values()):
            raise RuntimeError(f"An outer run failed; see the error.json files under {sweep_dir}.")
        evaluation = self.config.get("evaluation") or {}
        seed = int(evaluation.get("seed", 0))
        done = self._up_to_date(sweep_dir, seed)
        if done is not None:
            return done
        extra = self._null_tests(outer, outer_jobs, arguments)
        if self.every_recipe:
            extra["every_recipe"] = rows = self._every_recipe(launched, seed)
            if self.compare_to is not None and rows[self.compare_to].get("runs"):
                from osteolightning.selection.clinical import compare_with

                runs = {n: r["runs"] for n, r in rows.items() if r.get("runs")}
                extra["paired"] = {
                    "baseline": self.compare_to,
                    "recipes": compare_with(runs, self.compare_to, n_resamples=self.n_resamples),
                }
        # the digest of what the report is built from (the jobs' files, permutation reruns
        # included, and these options): a rerun of the finished sweep does not rebuild it
        extra["inputs"] = self._inputs(sweep_dir, seed)
        result = report(
            plan,
            chosen,
            scores,
            outer,
            sweep_dir / "selection",
            n_resamples=self.n_resamples,
            seed=seed,
            extra=extra,
        )
        self._show(result, sweep_dir, write=True)
        return result

    def _inputs(self, sweep_dir: Path, seed: int) -> str:
        from osteolightning.ensemble.leaderboard.outputs import inputs_digest

        options = {
            "recipes": self.plan.recipes,
            "folds": [self.plan.outer_folds, self.plan.inner_folds],
            "select_by": self.plan.select_by,
            "permutations": [self.permutations, self.job_permutations, self.recipe_permutations],
            "learning_curve": self.fractions,
            "n_resamples": self.n_resamples,
            "seed": seed,
            "every_recipe": self.every_recipe,
            "compare_to": self.compare_to,
            "image_permutations": self.image_permutations,
        }
        return inputs_digest(sweep_dir, options)

    def _up_to_date(self, sweep_dir: Path, seed: int) -> dict[str, Any] | None:
        """The report of ``sweep_dir/selection`` when it was built from the same jobs' files
        and options as now (``inputs``), shown again; else ``None`` (it is to be built)."""
        from osteolightning.runs import rundir

        folder = sweep_dir / "selection"
        result = rundir.read_json(folder / "selection.json")
        needed = ["selection.md", rundir.PREDICTIONS] + (
            ["study.md"] if self.compare_to is not None else []
        )
        if not isinstance(result, dict) or not all((folder / n).is_file() for n in needed):
            return None
        if result.get("inputs") != self._inputs(sweep_dir, seed):
            return None
        log.info(
            f"The nested cross-validation in {sweep_dir} is complete and its report "
            f"({folder}) was built from the same jobs' files and options: not rebuilt."
        )
        self._show(result, sweep_dir, write=False)
        return result

    def _show(self, result: dict[str, Any], sweep_dir: Path, write: bool) -> None:
        """Print the report (and the study, with ``compare_to``); ``write``: save the study."""
        from osteolightning.selection.nested import markdown

        print(markdown(result), flush=True)
        if self.compare_to is not None:
            from osteolightning.selection import clinical
            from osteolightning.utils.files import atomic_write_text

            study = clinical.markdown(result)
            if write:
                atomic_write_text(sweep_dir / "selection" / "study.md", study)
            print(study, flush=True)

    def _null_tests(
        self, outer: dict[int, Path], outer_jobs: list[Any], arguments: list[str]
    ) -> dict[str, Any]:
        from osteolightning.errors import ConfigError
        from osteolightning.selection import null

        extra: dict[str, Any] = {}
        try:
            folds = [null.load_fold(outer[k]) for k in sorted(outer)]
        except ConfigError as err:  # a chosen recipe is not a fitted-head one
            log.warning(
                f"{err} Permutation test by reruns: job_permutations={self.job_permutations}."
            )
            if self.job_permutations:
                extra["permutation"] = self._job_permutations(outer, outer_jobs, arguments)
            return extra
        if self.permutations:
            extra["permutation"] = null.permutation_test(
                folds, self.permutations, self.plan.select_by
            )
        if self.fractions:
            extra["learning_curve"] = null.learning_curve(
                folds, self.fractions, n_resamples=self.n_resamples
            )
        return extra

    def _every_recipe(self, launched: dict[Any, Path], seed: int) -> dict[str, Any]:
        """Per recipe: its outer runs' pooled metrics with intervals and, for a fitted-head
        recipe, its permutation test (``recipe_permutations`` shuffles)."""
        from osteolightning.errors import ConfigError
        from osteolightning.selection import null
        from osteolightning.selection.clinical import target_report
        from osteolightning.selection.nested import finished, pooled_report

        rows: dict[str, Any] = {}
        for name in self.plan.recipes:
            dirs = {job.outer: d for job, d in launched.items() if job.recipe == name}
            runs = [dirs.get(k) for k in range(self.plan.outer_folds)]
            if not all(d is not None and finished(d) for d in runs):
                log.error(f"Recipe `{name}`: an outer run failed; it has no row.")
                rows[name] = {"pooled": None}
                continue
            pooled, _, _ = pooled_report(runs, self.n_resamples, seed)
            row: dict[str, Any] = {"pooled": pooled, "runs": [str(d) for d in runs]}
            row["target"] = target_report(runs, n_resamples=self.n_resamples, seed=seed)
            folds = None
            if self.recipe_permutations or self.image_permutations:
                try:
                    folds = [null.load_fold(d) for d in runs]
                except ConfigError:
                    folds = None  # not a fitted-head recipe: no in-process test
            if folds is not None and self.recipe_permutations:
                row["permutation"] = null.permutation_test(
                    folds, self.recipe_permutations, self.plan.select_by
                )
            if folds is not None and self.image_permutations and null.fuses(folds[0]):
                row["image_permutation"] = null.image_permutation_test(
                    folds, self.image_permutations, self.plan.select_by
                )
            rows[name] = row
        return rows

    def _job_permutations(
        self, outer: dict[int, Path], outer_jobs: list[Any], arguments: list[str]
    ) -> dict[str, Any]:
        """The permutation test by reruns of the outer runs on shuffled labels (any recipe)."""
        import numpy as np

        from osteolightning.selection.nested import Job, Pool

        metric = self.plan.select_by
        observed_pool = Pool()
        for k in sorted(outer):
            observed_pool.add_run(outer[k])
        observed = observed_pool.metrics()[metric]
        jobs = [
            Job("outer", j.outer, j.recipe, None, (*j.overrides, f"data.permute_labels={p}"))
            for p in range(self.job_permutations)
            for j in outer_jobs
        ]
        dirs = self._launch(jobs, arguments)
        null = []
        for p in range(self.job_permutations):
            pool = Pool()
            for job in jobs[p * len(outer_jobs) : (p + 1) * len(outer_jobs)]:
                pool.add_run(dirs[job])
            null.append(pool.metrics().get(metric, float("nan")))
        values = np.array(null)
        return {
            "metric": metric,
            "observed": float(observed),
            "null_mean": float(np.nanmean(values)),
            "null_q95": float(np.nanquantile(values, 0.95)),
            "p_value": (1 + int(np.sum(values >= observed))) / (1 + len(values)),
            "n_permutations": len(values),
            "null": [float(v) for v in values],
        }
