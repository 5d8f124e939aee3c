/** The AR generator (docs/model.md, "AR generator"): configuration, model, sampling. */
export * from './config.js';
export * from './gpt.js';
export * from './sample.js';
export * from './mergear.js';
export * from './images.js';
