/**
 * Keep counts for a tokenizer configuration: the candidate list (with the probabilities training
 * draws from) and the per-block merge schedule that keeps exactly K tokens (docs/model.md, "Merge schedules").
 */
import { checkParseR, mergeCandidates, parseR } from './schedule.js';

/** Candidate keep counts K, each with its r and cumulative probability. */
export interface KeepCandidates {
  keep: number[];
  r: number[];
  cumulative: number[];
}

/** The encoder's candidates (the config's cand_distribution), or the single default K without one. */
export function keepCandidatesFor(
  numBlocks: number,
  fullNum: number,
  mergeNum: number,
  candDistribution: string | null,
): KeepCandidates {
  const embedRes = Math.round(Math.sqrt(fullNum));
  if (!candDistribution) {
    return { keep: [fullNum - mergeNum], r: [checkParseR(numBlocks, mergeNum, fullNum, -0.5)], cumulative: [1] };
  }
  const c = mergeCandidates({ embedRes, mergeNum, candDistribution, numLayers: numBlocks, inflect: -0.5 });
  return { keep: c.remainList, r: c.rCandList, cumulative: c.rProbList };
}

/** Per-block merge counts that take L tokens down to `keep` (inflect -0.5, total = L - keep). */
export function mergeScheduleFor(numBlocks: number, fullNum: number, keep: number): number[] {
  const merge = fullNum - keep;
  if (merge === 0) return new Array<number>(numBlocks).fill(0);
  const r = checkParseR(numBlocks, merge, fullNum, -0.5);
  return parseR(numBlocks, r, -0.5, merge);
}
