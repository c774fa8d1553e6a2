// Builds native/, snapfs's own N-API addon, with node-gyp; npm runs this at install.
// Quiet on success. On failure it prints the build's output, then one line saying what is
// missing and how to get it, and exits 1. The addon lands in native/build/Release/.
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'native');
const addon = join(nativeDir, 'build', 'Release', 'snapfs_native.node');
const buildToolsHint = 'run scripts/setup.sh or install build-essential';

/** Prints the captured output (if any) and the one clear line, then exits. */
function fail(reason, output = '', hint = buildToolsHint) {
  if (output) process.stderr.write(output.endsWith('\n') ? output : `${output}\n`);
  process.stderr.write(`snapfs: cannot build native/: ${reason} — ${hint}\n`);
  process.exit(1);
}

/** Whether `file` is an executable regular file. */
function isExecutable(file) {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The path of command `name` (a bare name looked up in PATH, or a path), or undefined. */
function which(name) {
  if (name.includes('/')) return isExecutable(name) ? name : undefined;
  return (process.env.PATH ?? '')
    .split(delimiter)
    .filter(Boolean)
    .map((dir) => join(dir, name))
    .find(isExecutable);
}

// The tools node-gyp needs, honouring the variables make and node-gyp read themselves.
const compiler = (process.env.CC ?? 'cc').trim().split(/\s+/)[0];
const python = process.env.npm_config_python || process.env.PYTHON || 'python3';
if (!which(compiler)) fail(`no C compiler (${compiler}) found`);
if (!which('make')) fail('no make found');
if (!which(python)) fail(`no ${python} found`);

// The FUSE transport compiles against libfuse 3; binding.gyp asks pkg-config for its flags.
const fuseHint = 'install libfuse3-dev and pkg-config (scripts/setup.sh does)';
if (!which('pkg-config')) fail('no pkg-config found', '', fuseHint);
if (spawnSync('pkg-config', ['--exists', 'fuse3']).status !== 0) {
  fail('the libfuse 3 headers are missing (pkg-config knows no fuse3)', '', fuseHint);
}

// node-gyp itself: npm's own when npm runs us, else one on PATH, else the copy bundled with
// the npm beside this node, else whatever npx finds.
const nodeDir = resolve(dirname(process.execPath), '..');
const pathGyp = which('node-gyp');
const bundledGyp = join(nodeDir, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gyp = process.env.npm_config_node_gyp
  ? [process.execPath, process.env.npm_config_node_gyp]
  : pathGyp
    ? [pathGyp]
    : existsSync(bundledGyp)
      ? [process.execPath, bundledGyp]
      : ['npx', '--yes', 'node-gyp'];

// Build against this node's own headers when it ships them, so nothing is downloaded.
const args = ['rebuild'];
if (!process.env.npm_config_nodedir && existsSync(join(nodeDir, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${nodeDir}`);
}

// The addon is plain C, so it links with the C compiler too (gyp's default is g++).
const build = spawnSync(gyp[0], [...gyp.slice(1), ...args], {
  cwd: nativeDir,
  env: { ...process.env, LINK: process.env.LINK ?? process.env.CC ?? 'cc' },
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'pipe'],
  maxBuffer: 64 * 1024 * 1024,
});
const output = `${build.stdout ?? ''}${build.stderr ?? ''}`;
if (build.error) fail(`cannot run ${gyp.join(' ')}: ${build.error.message}`, output);
if (build.status !== 0) {
  fail(`node-gyp rebuild failed (${build.signal ?? `exit ${build.status}`})`, output);
}
if (!existsSync(addon)) fail(`node-gyp reported success but ${addon} is missing`, output);
