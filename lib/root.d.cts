/** The mergevq package's root folder. */
declare function packageRoot(): string;
export = packageRoot;
