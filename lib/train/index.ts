/** Training pieces: optimizers, gradient clipping and accumulation, lr schedules, EMA of weights. */
export * from './optim.js';
export * from './schedule.js';
export * from './ema.js';
