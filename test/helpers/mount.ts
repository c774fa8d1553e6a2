/**
 * The harness every integration test stands on. It proves nothing by itself; it guarantees what
 * the tests rely on: each test gets its own store and mount point under /var/tmp (or
 * $SNAPFS_TEST_PARENT), the real `snapfs` CLI mounts it with the daemon in a child process (a
 * synchronous fs call on the mount from the daemon's own process would deadlock), and when the
 * test ends, passed or failed, the mount is gone, the daemon has exited and the directory is
 * removed. The storage-less daemons of scripts/ mount the same way (`mountScript`), without a
 * store.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises'
import { constants as osConstants } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'

/** The compiled CLI under test. */
export const SNAPFS_CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'src', 'cli', 'snapfs.js')
/** The compiled snapshot CLI under test. */
export const SNAPCTL_CLI = resolve(dirname(SNAPFS_CLI), 'snapctl.js')
/** The compiled scripts (storage-less daemons) under test. */
export const SCRIPTS_DIR = resolve(dirname(SNAPFS_CLI), '..', '..', 'scripts')

/** The file-system type a snapfs mount shows in /proc/mounts. */
export const FSTYPE = 'fuse.snapfs'

/** The FUSE transport the daemons of this run use (SNAPFS_TRANSPORT, as `snapfs mount` reads it). */
export const TRANSPORT: 'native' | 'fuse-native' = process.env.SNAPFS_TRANSPORT === 'fuse-native' ? 'fuse-native' : 'native'

/** A limit of fuse-native: `reason` as a todo on that transport, nothing on the native one. */
export function onFuseNative (reason: string): string | false {
  return TRANSPORT === 'fuse-native' ? reason : false
}

/**
 * Test directories live on a real disk, never on a tmpfs that memory-bound tests would fill. A
 * run may choose its own parent, so it sweeps only what its own earlier runs abandoned.
 */
const TEST_PARENT = process.env.SNAPFS_TEST_PARENT ?? '/var/tmp'
const TEST_PREFIX = 'snapfs-test-'
/** Names the test process that owns a test directory, so a later run can sweep abandoned ones. */
const OWNER_FILE = 'owner.pid'

const READY_POLL_MS = 20
const READY_LIMIT_MS = 15_000
/** How long `umount()` waits for the daemon to exit once `snapfs umount` has succeeded. */
const EXIT_LIMIT_MS = 60_000
/** Teardown must finish even when the daemon hangs: shorter bounds there. */
const TEARDOWN_UMOUNT_MS = 30_000
const TEARDOWN_EXIT_MS = 15_000
/** The daemon's output kept for error messages: its last 64 KiB. */
const OUTPUT_TAIL = 64 * 1024

export interface RunResult { code: number; stdout: string; stderr: string }
export interface RunOptions {
  cwd?: string
  /** The command is killed and the call rejects after this long (default 2 minutes). */
  timeoutMs?: number
}

export interface Mounted {
  dir: string
  store: string
  mnt: string
  child: ChildProcess
  pid: number
  /** Runs `snapfs umount`, waits for the daemon to exit, returns its exit code. */
  umount(): Promise<number>
  /** SIGKILLs the daemon, then clears the dead mount (fusermount -uz). */
  kill9(): Promise<void>
  /** Mounts the same store again on the same mount point (by default with the same arguments). */
  remount(extraArgs?: string[]): Promise<Mounted>
}

/** A fresh, initialised store and an empty mount point, not mounted. */
export interface Store { dir: string; store: string; mnt: string }

/** One mount of a FUSE file system as /proc/self/mountinfo lists it. */
export interface MountEntry { id: number; fstype: string; source: string }

interface Daemon {
  child: ChildProcess
  exited: boolean
  exit: Promise<number>
  output(): string
  /** How teardown asks it to unmount and exit; none for snapfs, whose `umount` does that. */
  stop?: () => void
}

interface Site extends Store { daemons: Daemon[] }

/** The shell's convention: an exit code, or 128 + the number of the signal that ended it. */
function exitCode (code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code
  return signal === null ? -1 : 128 + osConstants.signals[signal]
}

/** Runs an external command to completion and collects what it printed. */
export function run (cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const limit = opts.timeoutMs ?? 120_000
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    let settled = false
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    // 'close' waits until every holder of the output pipes is gone: a command that leaves a
    // process behind holding them (a daemon that kept its parent's stdout) ends here instead.
    const timer = setTimeout(() => {
      settled = true
      child.kill('SIGKILL')
      child.stdout.destroy()
      child.stderr.destroy()
      reject(new Error(`${cmd} ${args.join(' ')}: no end after ${limit} ms (output still open); ` +
        `stderr so far: ${Buffer.concat(err).toString()}`))
    }, limit)
    child.on('error', e => {
      clearTimeout(timer)
      if (!settled) { settled = true; reject(e) }
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (settled) return
      settled = true
      resolvePromise({ code: exitCode(code, signal), stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() })
    })
  })
}

/** Runs the snapfs CLI under test. */
export async function snapfs (args: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (!existsSync(SNAPFS_CLI)) throw new Error(`${SNAPFS_CLI} is missing: build first (npx tsc -p tsconfig.json)`)
  return await run(process.execPath, [SNAPFS_CLI, ...args], opts)
}

/** Runs the snapctl CLI under test (`-C MOUNTPOINT` or a `cwd` inside the mount picks the mount). */
export async function snapctl (args: string[], opts: RunOptions = {}): Promise<RunResult> {
  if (!existsSync(SNAPCTL_CLI)) throw new Error(`${SNAPCTL_CLI} is missing: build first (npx tsc -p tsconfig.json)`)
  return await run(process.execPath, [SNAPCTL_CLI, ...args], opts)
}

/**
 * The errno code (`err.code`, e.g. 'ENOENT') of the error an fs operation throws or rejects
 * with, or 'no error' when it succeeds. Errors without a code are rethrown.
 */
export async function errnoOf (op: () => unknown): Promise<string> {
  try {
    await op()
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (typeof code === 'string') return code
    throw err
  }
  return 'no error'
}

/** Undoes the octal escapes (\040 for a space) the kernel uses in mount tables. */
function unescapeMountPath (field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

/** Every mount stacked on the path `mnt`, bottom first. */
export async function mountsAt (mnt: string): Promise<MountEntry[]> {
  const table = await readFile('/proc/self/mountinfo', 'utf8')
  const found: MountEntry[] = []
  for (const line of table.split('\n')) {
    const fields = line.split(' ')
    const dash = fields.indexOf('-', 6)
    if (dash < 0 || unescapeMountPath(fields[4]) !== mnt) continue
    found.push({ id: Number(fields[0]), fstype: fields[dash + 1], source: unescapeMountPath(fields[dash + 2]) })
  }
  return found
}

/** Processes other than this one whose command line names something inside `dir`. */
export async function pidsMentioning (dir: string): Promise<number[]> {
  const pids: number[] = []
  for (const name of await readdir('/proc')) {
    const pid = Number(name)
    if (!Number.isInteger(pid) || pid === process.pid) continue
    try {
      // Split on spaces too: a process that set its title has one joined command line.
      const words = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split(/[\0 ]/)
      if (words.some(w => w === dir || w.startsWith(dir + '/'))) pids.push(pid)
    } catch {
      // The process ended while the table was read.
    }
  }
  return pids
}

/** Rejects with `message` if `p` has not settled within `ms`. */
async function within<T> (p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const limit = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error(message)), ms) })
  try {
    return await Promise.race([p, limit])
  } finally {
    clearTimeout(timer)
  }
}

/** Lazily detaches every mount on `mnt` (fusermount -uz, then umount -l); throws if one stays. */
async function clearMount (mnt: string): Promise<void> {
  for (let attempt = 0; attempt < 8; attempt++) {
    if ((await mountsAt(mnt)).length === 0) return
    const viaFuse = await run('fusermount', ['-uz', mnt], { timeoutMs: 10_000 }).catch(() => undefined)
    if (viaFuse?.code === 0) continue
    await run('umount', ['-l', mnt], { timeoutMs: 10_000 }).catch(() => undefined)
  }
  const left = await mountsAt(mnt)
  if (left.length > 0) throw new Error(`${mnt} is still mounted (${left.map(e => e.fstype).join(', ')}) after lazy unmounts`)
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** SIGKILLs every process left that names the directory, then clears its mount. */
async function killAndDetach (site: Store): Promise<void> {
  for (const pid of await pidsMentioning(site.dir)) {
    try { process.kill(pid, 'SIGKILL') } catch { /* already gone */ }
  }
  await clearMount(site.mnt)
}

/**
 * Removes test directories whose owning test process is gone (killed by a runner timeout before
 * its teardown could run): their processes are killed and mounts detached before anything is
 * deleted, and a directory whose mount cannot be detached is left alone.
 */
async function sweepAbandoned (): Promise<void> {
  for (const name of await readdir(TEST_PARENT)) {
    if (!name.startsWith(TEST_PREFIX)) continue
    const dir = join(TEST_PARENT, name)
    const owner = Number(await readFile(join(dir, OWNER_FILE), 'utf8').catch(() => ''))
    if (!Number.isInteger(owner) || owner <= 0 || isAlive(owner)) continue
    try {
      await killAndDetach({ dir, store: join(dir, 'store'), mnt: join(dir, 'mnt') })
      await rm(dir, { recursive: true, force: true })
    } catch {
      // Still mounted: deleting through a live mount would be worse than leaving it.
    }
  }
}

/** The end of every test: unmount, stop every daemon, and only then delete the directory. */
async function cleanSite (t: Test, site: Site): Promise<void> {
  if ((await mountsAt(site.mnt)).some(e => e.fstype === FSTYPE)) {
    await snapfs(['umount', site.mnt], { timeoutMs: TEARDOWN_UMOUNT_MS }).catch(() => undefined)
  }
  for (const d of site.daemons) if (!d.exited) d.stop?.()
  for (const d of site.daemons) {
    await within(d.exit, TEARDOWN_EXIT_MS, 'no exit').catch(() => d.child.kill('SIGKILL'))
  }
  if (!t.passing()) {
    for (const d of site.daemons) {
      console.error(`# daemon pid ${d.child.pid ?? '?'} output (last ${OUTPUT_TAIL} bytes):\n${d.output()}`)
    }
  }
  await killAndDetach(site)
  await rm(site.dir, { recursive: true, force: true })
}

/** A fresh test directory with an empty mnt/, removed at the end of `t`. */
async function openDir (t: Test): Promise<Site> {
  await mkdir(TEST_PARENT, { recursive: true })
  await sweepAbandoned()
  const dir = await realpath(await mkdtemp(join(TEST_PARENT, TEST_PREFIX)))
  // Other users (the permission tests run commands as nobody) must be able to reach the mount.
  await chmod(dir, 0o755)
  await writeFile(join(dir, OWNER_FILE), String(process.pid))
  const site: Site = { dir, store: join(dir, 'store'), mnt: join(dir, 'mnt'), daemons: [] }
  t.teardown(() => cleanSite(t, site))
  await mkdir(site.mnt)
  return site
}

async function openSite (t: Test): Promise<Site> {
  const site = await openDir(t)
  const init = await snapfs(['init', site.store])
  if (init.code !== 0) throw new Error(`snapfs init ${site.store} exited with ${init.code}: ${init.stderr}`)
  return site
}

/** The mount is ready once a mount of type `fstype` sits on the mount point and answers a stat. */
async function isReady (mnt: string, fstype: string, deadline: number): Promise<boolean> {
  if (!(await mountsAt(mnt)).some(e => e.fstype === fstype)) return false
  // A mount left by a killed daemon is listed too, but answers ENOTCONN.
  const answer = stat(mnt).then(() => true, () => false)
  return await within(answer, Math.max(deadline - Date.now(), 1), 'stat hangs').catch(() => false)
}

/** Starts `snapfs mount --foreground` as a child and waits until the mount answers. */
async function startDaemon (site: Site, extraArgs: string[]): Promise<Daemon> {
  if (!existsSync(SNAPFS_CLI)) throw new Error(`${SNAPFS_CLI} is missing: build first (npx tsc -p tsconfig.json)`)
  return await startNode(site, [SNAPFS_CLI, 'mount', site.store, site.mnt, '--foreground', ...extraArgs], FSTYPE)
}

/** Runs node with `args` as a daemon that mounts `site.mnt`; waits until the mount answers. */
async function startNode (site: Site, args: string[], fstype: string): Promise<Daemon> {
  // setpriv execs node in place (same pid) after asking the kernel to send the daemon SIGTERM if
  // this test process dies without its teardown (a runner timeout): the mount is then released.
  const child = spawn('setpriv', ['--pdeathsig', 'SIGTERM', process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let tail = ''
  const keep = (b: Buffer): void => { tail = (tail + b.toString()).slice(-OUTPUT_TAIL) }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const daemon: Daemon = {
    child,
    exited: false,
    exit: new Promise(resolveExit => {
      child.once('exit', (code, signal) => { daemon.exited = true; resolveExit(exitCode(code, signal)) })
      child.once('error', err => { keep(Buffer.from(String(err))); daemon.exited = true; resolveExit(-1) })
    }),
    output: () => tail
  }
  site.daemons.push(daemon)
  const deadline = Date.now() + READY_LIMIT_MS
  while (Date.now() < deadline) {
    if (daemon.exited) {
      throw new Error(`${args.join(' ')} exited with ${await daemon.exit} before ${site.mnt} was mounted:\n${tail}`)
    }
    if (await isReady(site.mnt, fstype, deadline)) return daemon
    await sleep(READY_POLL_MS)
  }
  throw new Error(`${site.mnt} not mounted after ${READY_LIMIT_MS} ms; daemon output:\n${tail}`)
}

class LiveMount implements Mounted {
  readonly dir: string
  readonly store: string
  readonly mnt: string
  readonly child: ChildProcess
  readonly pid: number

  constructor (private readonly site: Site, private readonly daemon: Daemon, private readonly args: string[]) {
    this.dir = site.dir
    this.store = site.store
    this.mnt = site.mnt
    this.child = daemon.child
    this.pid = daemon.child.pid ?? -1
  }

  async umount (): Promise<number> {
    const r = await snapfs(['umount', this.mnt])
    if (r.code !== 0) throw new Error(`snapfs umount ${this.mnt} exited with ${r.code}: ${r.stderr}`)
    return await within(this.daemon.exit, EXIT_LIMIT_MS, `daemon ${this.pid} still runs ${EXIT_LIMIT_MS} ms after snapfs umount`)
  }

  async kill9 (): Promise<void> {
    this.daemon.child.kill('SIGKILL')
    await this.daemon.exit
    await clearMount(this.mnt)
  }

  async remount (extraArgs: string[] = this.args): Promise<Mounted> {
    if (!this.daemon.exited) throw new Error(`remount: daemon ${this.pid} still runs; umount() or kill9() it first`)
    return new LiveMount(this.site, await startDaemon(this.site, extraArgs), extraArgs)
  }
}

/**
 * A temporary directory /var/tmp/snapfs-test-XXXX holding an initialised store/ and an empty mnt/,
 * not mounted; removed at the end of `t` after whatever was mounted there is unmounted.
 */
export async function freshStore (t: Test): Promise<Store> {
  const { dir, store, mnt } = await openSite(t)
  return { dir, store, mnt }
}

/** A storage-less daemon of scripts/ mounted by a child process; `umount` stops it (SIGTERM). */
export interface ScriptMount {
  dir: string
  mnt: string
  child: ChildProcess
  /** What the daemon printed (its last 64 KiB). */
  output(): string
  /** SIGTERM: the daemon unmounts and exits; resolves to its exit code. */
  umount(): Promise<number>
}

/**
 * Mounts `script` (a compiled daemon of scripts/ taking MOUNTPOINT then `extraArgs`, whose mount
 * shows as `fstype`) on a fresh directory, torn down at the end of `t`.
 */
export async function mountScript (t: Test, script: string, fstype: string, extraArgs: string[] = []): Promise<ScriptMount> {
  const file = join(SCRIPTS_DIR, script)
  if (!existsSync(file)) throw new Error(`${file} is missing: build first (npx tsc -p tsconfig.json)`)
  const site = await openDir(t)
  const daemon = await startNode(site, [file, site.mnt, ...extraArgs], fstype)
  daemon.stop = () => { daemon.child.kill('SIGTERM') }
  return {
    dir: site.dir,
    mnt: site.mnt,
    child: daemon.child,
    output: daemon.output,
    umount: async () => {
      daemon.child.kill('SIGTERM')
      return await within(daemon.exit, EXIT_LIMIT_MS, `${script} still runs ${EXIT_LIMIT_MS} ms after SIGTERM`)
    }
  }
}

/** A fresh store mounted in the foreground by a child daemon, torn down at the end of `t`. */
export async function mountFresh (t: Test, extraArgs: string[] = []): Promise<Mounted> {
  const site = await openSite(t)
  return new LiveMount(site, await startDaemon(site, extraArgs), extraArgs)
}

/** The SHA-256 of some bytes, in hex: what tests compare instead of printing megabytes. */
export function sha (bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** A fresh directory `name` at the root of a mount (mode 0755), so tests sharing it never collide. */
export async function scratchDir (m: Mounted, name: string): Promise<string> {
  const dir = join(m.mnt, name)
  await mkdir(dir, { mode: 0o755 })
  await chmod(dir, 0o755)
  return dir
}

/** renameat2(from, to, flags) in a child (python3 ctypes): 'ok', or the errno's name. */
export async function renameat2 (from: string, to: string, flags: number): Promise<string> {
  const script = [
    'import ctypes, errno, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'r = libc.renameat2(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), int(sys.argv[3]))',
    "print('ok' if r == 0 else errno.errorcode[ctypes.get_errno()])"
  ].join('\n')
  const result = await run('python3', ['-c', script, from, to, String(flags)])
  if (result.code !== 0) throw new Error(`python3 renameat2: ${result.stderr}`)
  return result.stdout.trim()
}
