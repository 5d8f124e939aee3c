/** Training pieces: optimizers, gradient clipping and accumulation, lr schedules, EMA of weights. */
export * from './optim.js';
export * from './schedule.js';
export * from './ema.js';
export * from './rng.js';
export * from './state.js';
export * from './discriminator.js';
export * from './gan.js';
export * from './lpips.js';
export * from './objective.js';
export * from './codes.js';
export * from './plot.js';
export * from './tokenizer-trainer.js';
export * from './ar-trainer.js';
