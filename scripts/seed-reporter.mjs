// Vitest reporter for scripts/test-seeds.mjs: one JSON line per finished test case, naming its
// project (one project per seed), file and state, appended to the file in MERGEVQ_SEED_REPORT.
import * as fs from 'node:fs';

export default class SeedReporter {
  onTestCaseResult(testCase) {
    const r = testCase.result();
    const line = {
      project: testCase.project.name,
      file: testCase.module.moduleId,
      name: testCase.fullName,
      state: r.state,
      error: r.errors?.[0]?.message?.split('\n')[0] ?? null,
    };
    fs.appendFileSync(process.env.MERGEVQ_SEED_REPORT, JSON.stringify(line) + '\n');
  }
  onTestModuleEnd(mod) {
    // a file that failed to load or crashed has errors of its own and maybe no test results
    const errs = mod.errors?.() ?? [];
    if (errs.length)
      fs.appendFileSync(
        process.env.MERGEVQ_SEED_REPORT,
        JSON.stringify({
          project: mod.project.name,
          file: mod.moduleId,
          name: '(file)',
          state: 'failed',
          error: errs[0].message?.split('\n')[0] ?? 'failed',
        }) + '\n',
      );
  }
}
