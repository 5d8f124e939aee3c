/**
 * How many tokens each ToMe block merges (docs/model.md, "Merge schedules"), reproducing the reference's
 * Python / NumPy arithmetic exactly (int() truncation, float64 order of operations, NumPy's
 * pairwise summation and round-half-even `np.around`).
 */
import { checkInt, checkKeys, optionKeys, rangeError, typeError } from '../errors.js';

/**
 * Per-layer merge counts for `numLayers` blocks from (r, inflect): lo = int(r (1 - inflect)),
 * hi = 2r - lo, r_l = int(lo + l (hi - lo) / (numLayers - 1)). With `total`, the remainder
 * total - sum(r_l) is added to r_0 when inflect < 0, else to the last layer.
 */
export function parseR(numLayers: number, r: number, inflect = 0, total?: number | null): number[] {
  checkInt('numLayers', numLayers, 2);
  checkInt('r', r, 0);
  if (typeof inflect !== 'number' || !Number.isFinite(inflect)) typeError('inflect', 'a finite number', inflect);
  const lo = Math.trunc(r * (1.0 - inflect));
  const hi = 2 * r - lo;
  const step = (hi - lo) / (numLayers - 1);
  const out = Array.from({ length: numLayers }, (_, i) => Math.trunc(lo + step * i));
  if (total !== undefined && total !== null) {
    checkInt('total', total);
    const rem = total - out.reduce((a, b) => a + b, 0);
    if (rem !== 0) {
      if (inflect < 0) out[0]! += rem;
      else out[numLayers - 1]! += rem;
    }
  }
  return out;
}

/**
 * The r whose schedule (without total) removes closest to `mergeNum` tokens: scans r = 0, 1, ...
 * and stops once the gap grows (the reference's `check_parse_r`). With `sqrt`, only r leaving a
 * perfect-square token count are accepted.
 */
export function checkParseR(numLayers: number, mergeNum: number, totalNum: number, inflect = 0, sqrt = false): number {
  checkInt('mergeNum', mergeNum, 0);
  checkInt('totalNum', totalNum, 0);
  let gap = 1e10;
  let best = 0;
  for (let i = 0; i < mergeNum; ++i) {
    const s = parseR(numLayers, i, inflect).reduce((a, b) => a + b, 0);
    const g = s - mergeNum;
    if (gap > Math.abs(g)) {
      const keep = totalNum - s;
      if (sqrt && Math.trunc(Math.sqrt(keep)) ** 2 !== keep) continue;
      best = i;
      gap = Math.abs(g);
    } else if (gap < Math.abs(g)) {
      break;
    }
  }
  return best;
}

/** NumPy's float64 sum (pairwise, 8 accumulators for n >= 8) of a short array. */
function npSum(a: readonly number[]): number {
  const n = a.length;
  if (n < 8) {
    let s = 0;
    for (const v of a) s += v;
    return s;
  }
  if (n > 128) {
    const h = (n >> 1) - ((n >> 1) % 8);
    return npSum(a.slice(0, h)) + npSum(a.slice(h));
  }
  const r = a.slice(0, 8);
  let i = 8;
  for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; ++j) r[j]! += a[i + j]!;
  let s = r[0]! + r[1]! + (r[2]! + r[3]!) + (r[4]! + r[5]! + (r[6]! + r[7]!));
  for (; i < n; ++i) s += a[i]!;
  return s;
}

/** Round half to even (C rint), as NumPy's around uses. */
function rint(y: number): number {
  const f = Math.floor(y);
  const d = y - f;
  const v = d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
  return v === 0 && (y < 0 || Object.is(y, -0)) ? -0 : v; // keeps the sign of zero, like rint
}

/** `np.around(x, decimals)` for decimals >= 0: rint(x * 10^d) / 10^d. */
export function npAround(x: number, decimals: number): number {
  const p = 10 ** decimals;
  return rint(x * p) / p;
}

export type CandDistribution = 'gaussian' | 'exponential' | 'uniform';

/** Parameters of {@link generateProbList}'s distributions. */
export interface ProbListKwargs {
  /** Gaussian mean (default 0). */
  mean?: number;
  /** Gaussian standard deviation (default 1). */
  std?: number;
  /** Exponential rate (default 1). */
  lambd?: number;
}
const PROB_LIST_KEYS = optionKeys<ProbListKwargs>()(['mean', 'std', 'lambd']);

/**
 * Cumulative candidate probabilities (rounded to 5 decimals) for `n` candidates j = 0..n-1:
 * gaussian exp(-(j - mean)^2 / (2 std^2)) + 0.05, exponential lambd exp(-lambd j) + 0.1, else uniform.
 */
export function generateProbList(n: number, distribution: string, kwargs: ProbListKwargs = {}): number[] {
  checkKeys('generateProbList kwargs', kwargs, PROB_LIST_KEYS);
  checkInt('n', n, 1);
  let p: number[];
  const dist = distribution.toLowerCase();
  if (dist === 'gaussian') {
    const mean = kwargs.mean ?? 0;
    const std = kwargs.std ?? 1;
    p = Array.from({ length: n }, (_, j) => Math.exp(-((j - mean) ** 2) / (2 * std ** 2)) + 0.05);
  } else if (dist === 'exponential') {
    const lambd = kwargs.lambd ?? 1;
    p = Array.from({ length: n }, (_, j) => lambd * Math.exp(-lambd * j) + 0.1);
  } else {
    p = Array.from({ length: n }, () => 1 / n);
  }
  const s = npSum(p);
  p = p.map((v) => v / s);
  const out: number[] = [];
  let c = 0;
  for (const v of p) {
    c += v;
    out.push(npAround(c, 5));
  }
  return out;
}

/** The keep-count candidates the encoder builds for one configuration. */
export interface MergeCandidates {
  /** Tokens kept for each candidate (K). */
  remainList: number[];
  /** The r of each candidate (`check_parse_r(numLayers, L - K, L, inflect)`). */
  rCandList: number[];
  /** Cumulative probabilities (last = 1). */
  rProbList: number[];
  /** The default r for `mergeNum` and the side of the default kept grid. */
  r: number;
  mergeRes: number;
  /** L = embedRes^2 tokens before merging (without the class token). */
  total: number;
  numLayers: number;
  inflect: number;
}

/** Options of {@link mergeCandidates}. */
export interface MergeCandidatesOptions {
  /** Side of the token grid (L = embedRes^2). */
  embedRes: number;
  /** Tokens merged at the default keep count. */
  mergeNum: number;
  /** "gaussian-n" / "exponential-n" (n defaults to 5). */
  candDistribution: string;
  numLayers: number;
  /** check_parse_r's inflect (default -0.5). */
  inflect?: number;
}
const MERGE_CANDIDATES_KEYS = optionKeys<MergeCandidatesOptions>()([
  'embedRes',
  'mergeNum',
  'candDistribution',
  'numLayers',
  'inflect',
]);

/**
 * Builds the candidates for `candDistribution` "gaussian-n" / "exponential-n" (n defaults to 5):
 * remain_list = [int((sqrt(L - mergeNum) + i)^2) for i in range(-bias, n - bias)], bias = 1 for
 * gaussian (mean 1), 0 otherwise; std 0.5, lambd 2.
 */
export function mergeCandidates(opts: MergeCandidatesOptions): MergeCandidates {
  checkKeys('mergeCandidates options', opts, MERGE_CANDIDATES_KEYS);
  const embedRes = checkInt('embedRes', opts.embedRes, 1);
  const L = embedRes ** 2;
  const mergeNum = checkInt('mergeNum', opts.mergeNum, 0, L - 1);
  const numLayers = checkInt('numLayers', opts.numLayers, 2);
  const inflect = opts.inflect ?? -0.5;
  const parts = opts.candDistribution.split('-');
  if (parts.length > 2) rangeError('candDistribution', '"<gaussian|exponential>[-n]"', opts.candDistribution);
  const dist = parts[0]!;
  const n = parts.length === 2 ? checkInt('candDistribution count', Number(parts[1]), 1) : 5;
  const bias = dist.toLowerCase() === 'gaussian' ? 1 : 0;
  const root = Math.sqrt(L - mergeNum);
  const remainList = Array.from({ length: n }, (_, k) => Math.trunc((root + (k - bias)) ** 2));
  const rProbList = generateProbList(n, dist, { mean: bias, std: 0.5, lambd: 2.0 });
  const rCandList = remainList.map((K) => checkParseR(numLayers, Math.trunc(L - K), L, inflect));
  return {
    remainList,
    rCandList,
    rProbList,
    r: checkParseR(numLayers, mergeNum, L, inflect),
    mergeRes: Math.trunc(Math.sqrt(L - mergeNum)),
    total: L,
    numLayers,
    inflect,
  };
}

/** One pick: the candidate index, its r, kept count, total merged and the per-block schedule. */
export interface MergePick {
  index: number;
  r: number;
  keep: number;
  totalMerge: number;
  mergeRes: number;
  perLayer: number[];
}

/** First index with cumulative p >= u (Python's bisect_left), clamped to the last candidate. */
function bisectLeft(list: readonly number[], u: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid]! < u) lo = mid + 1;
    else hi = mid;
  }
  return Math.min(lo, list.length - 1);
}

/**
 * Picks a keep-count candidate per training step: `atStep(t)` is the reference's deterministic
 * cycle (u = (t mod 100) * 0.01), `random()` draws u from a seeded generator (mulberry32).
 */
export class MergeSchedulePicker {
  private state: number;
  constructor(
    readonly candidates: MergeCandidates,
    seed = 0,
  ) {
    this.state = seed >>> 0;
  }

  /** The candidate for cumulative-probability level u in [0, 1). */
  pick(u: number): MergePick {
    if (typeof u !== 'number' || !(u >= 0 && u <= 1)) rangeError('u', 'a number in [0, 1]', u);
    const c = this.candidates;
    const index = bisectLeft(c.rProbList, u);
    const keep = c.remainList[index]!;
    const totalMerge = c.total - keep;
    const r = c.rCandList[index]!;
    return {
      index,
      r,
      keep,
      totalMerge,
      mergeRes: Math.trunc(Math.sqrt(keep)),
      perLayer: parseR(c.numLayers, r, c.inflect, totalMerge),
    };
  }

  /** The reference's deterministic cycle: u = (step mod 100) * 0.01. */
  atStep(step: number): MergePick {
    checkInt('step', step, 0);
    return this.pick((step % 100) * 0.01);
  }

  /** A seeded random draw (reproducible from the constructor's seed). */
  random(): MergePick {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return this.pick(((t ^ (t >>> 14)) >>> 0) / 4294967296);
  }
}
