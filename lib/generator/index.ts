/** The AR generator (SPEC 3): configuration, model, sampling. */
export * from './config.js';
export * from './gpt.js';
export * from './sample.js';
export * from './mergear.js';
export * from './images.js';
