/** Typed op-program wrappers for every native op family (`yield*` them inside a program). */
export * as attention from './attention.js';
export * as lfq from './lfq.js';
export * as linalg from './linalg.js';
export * as merge from './merge.js';
export * as nn from './nn.js';
export * as optim from './optim.js';
export * as pool from './pool.js';
export * as tensor from './tensor.js';
