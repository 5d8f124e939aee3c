declare const addon: unknown;
export = addon;
