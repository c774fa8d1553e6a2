#!/usr/bin/env node
/**
 * `snapfs`: create, mount, unmount, inspect and check stores. The mount runs as a background
 * daemon by default (this same program with --foreground, detached, logging to a file) and the
 * command returns once the mount answers.
 */
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Command, Option } from 'commander'
import { UserError } from '../errors.js'
import { Store, DEFAULT_VOLUME, FORMAT_VERSION } from '../store/store.js'
import { runDaemon, type Transport } from '../daemon/daemon.js'
import { absoluteMountpoint, answers, fuseUnmount, mountAt } from '../daemon/mounts.js'
import { call } from '../control/client.js'
import { checkStore } from '../store/check.js'
import { beginVolumeDelete, promote, volumeDeleteStep } from '../store/clone.js'
import { acquireVolumeLock } from '../daemon/lock.js'
import { prefixRange, volumePrefix } from '../store/keys.js'
import { nativeExports, syncMount } from '../native.js'
import { defaultStore, formatBytes, formatTable, parseDuration, parseSize, runAction } from './common.js'

const DEFAULT_CACHE = '256M'
const DEFAULT_DIRTY_AGE = '2s'
const MOUNT_WAIT_MS = 30_000
/** Records one transaction of `delete-volume` removes. */
const VOLUME_DELETE_BATCH = 4096

const program = new Command('snapfs')
  .description('A file system with instant, incremental, browsable snapshots.\n\n' +
    'Quick start:\n  snapfs mount ~/work        mount the default store (created on first use)\n' +
    '  snapfs umount ~/work       flush and unmount')
  .showHelpAfterError()

program.command('init')
  .description('create a store (default: $SNAPFS_STORE or ~/.local/share/snapfs/default)')
  .argument('[store]', 'directory for the new store')
  .option('--block-size <size>', 'data block size, a power of two from 4K to 1M', '64K')
  .action(async (storeArg: string | undefined, opts: { blockSize: string }) => runAction('snapfs', async () => {
    const dir = storeArg ?? defaultStore()
    const store = await Store.init(dir, { blockSize: parseSize(opts.blockSize) })
    process.stdout.write(`created store ${store.dir} (format v${FORMAT_VERSION}, ${formatBytes(store.blockSize)} blocks, volume ${DEFAULT_VOLUME})\n`)
    await store.close()
  }))

program.command('mount')
  .description('mount a store\'s volume on a directory (created if missing)')
  .usage('[options] [store] <mountpoint>')
  .argument('<store-or-mountpoint>', 'the store, or the mount point when the default store is used')
  .argument('[mountpoint]', 'where to mount')
  .option('-f, --foreground', 'stay attached instead of running in the background')
  .option('--volume <name>', 'volume to mount', DEFAULT_VOLUME)
  .option('--cache-size <size>', 'page cache memory bound', DEFAULT_CACHE)
  .option('--dirty-age <duration>', 'longest time a change waits in memory before it is committed', DEFAULT_DIRTY_AGE)
  .option('--log <file>', 'log file of the background daemon (default: STORE/VOLUME.log)')
  .addOption(new Option('--snapdir <mode>', 'whether the root\'s listing shows .snapshots (it is always reachable by path)').choices(['hidden', 'visible']).default('hidden'))
  .addOption(new Option('--allow-other', 'let other users use the mount (default when root)'))
  .addOption(new Option('--no-allow-other', 'only the mounting user may use the mount'))
  .addOption(new Option('--transport <name>', 'native: libfuse 3 low-level, from this package\'s addon (default where it loads); fuse-native: libfuse 2 by path').choices(['native', 'fuse-native']).env('SNAPFS_TRANSPORT'))
  .action(async (first: string, second: string | undefined, opts: MountFlags) => runAction('snapfs', async () => {
    const storeDir = path.resolve(second === undefined ? defaultStore() : first)
    const mountpoint = absoluteMountpoint(second === undefined ? first : second)
    const cacheBytes = parseSize(opts.cacheSize)
    const dirtyAgeMs = parseDuration(opts.dirtyAge)
    if (cacheBytes < 1024 * 1024) throw new UserError('--cache-size must be at least 1M')
    if (dirtyAgeMs < 10 || dirtyAgeMs > 60_000) throw new UserError('--dirty-age must be between 10ms and 60s')
    if (!fs.existsSync(path.join(storeDir, 'data.mdb')) && second === undefined) {
      const store = await Store.init(storeDir)
      await store.close()
      process.stderr.write(`snapfs: created the default store ${storeDir}\n`)
    }
    const allowOther = opts.allowOther ?? (process.getuid?.() === 0)
    if (opts.foreground === true) {
      const transport = opts.transport ?? defaultTransport()
      const code = await runDaemon({ store: storeDir, volume: opts.volume, mountpoint, cacheBytes, dirtyAgeMs, allowOther, snapdirVisible: opts.snapdir === 'visible', transport })
      process.exit(code)
    }
    await mountInBackground(storeDir, mountpoint, opts)
  }))

program.command('umount')
  .alias('unmount')
  .description('flush everything and unmount; the daemon exits')
  .argument('<mountpoint>')
  .option('--force', 'unmount even when busy, when the daemon is dead (lazy unmount) or when it holds changes a full disk cannot take (they are lost)')
  .action(async (mountArg: string, opts: { force?: boolean }) => runAction('snapfs', async () => {
    const mountpoint = absoluteMountpoint(mountArg)
    const entry = mountAt(mountpoint)
    if (entry === undefined) throw new UserError(`${mountpoint} is not mounted`)
    let warning = answers(mountpoint) ? flushKernel(mountpoint) : undefined
    try {
      const { lost } = await call(mountpoint, 'unmount', { force: opts.force === true }) as { lost: string | null }
      if (lost !== null) warning = `unmounted without the changes the daemon could not commit (${lost})`
    } catch (err) {
      if (!(err instanceof UserError) || !/no snapfs daemon answers|closed the connection/.test(err.message)) throw err
      if (/closed the connection/.test(err.message) && mountAt(mountpoint) === undefined) return
      if (opts.force !== true) {
        const state = answers(mountpoint) ? 'no daemon answers for it' : 'its daemon is gone (Transport endpoint is not connected)'
        throw new UserError(`${mountpoint}: ${state}; clear it with: snapfs umount --force ${mountpoint}`)
      }
      await fuseUnmount(mountpoint, true)
    }
    if (warning !== undefined) process.stderr.write(`snapfs: ${mountpoint}: ${warning}\n`)
    process.stdout.write(`unmounted ${mountpoint}\n`)
  }))

program.command('info')
  .description('show a store\'s format, volumes and size')
  .argument('[store]')
  .option('--json', 'machine-readable output')
  .action(async (storeArg: string | undefined, opts: { json?: boolean }) => runAction('snapfs', async () => {
    const store = Store.open(storeArg ?? defaultStore())
    const volumes = [...store.volumes.getRange()].map(({ value }) => ({
      ...value,
      inodes: store.inodes.getKeysCount(prefixRange(volumePrefix(value.id))),
      snapshots: store.snapshots.getKeysCount(prefixRange(volumePrefix(value.id)))
    }))
    const size = fs.statSync(path.join(store.dir, 'data.mdb')).size
    const info = { store: store.dir, format: store.format.version, blockSize: store.blockSize, fileBytes: size, volumes }
    await store.close()
    if (opts.json === true) {
      process.stdout.write(JSON.stringify(info, null, 2) + '\n')
      return
    }
    process.stdout.write(`store       ${info.store}\nformat      v${info.format}\nblock size  ${formatBytes(info.blockSize)}\nstore file  ${formatBytes(size)}\n`)
    for (const volume of volumes) {
      process.stdout.write(`volume      ${volume.name} (generation ${volume.gen}, ${volume.inodes} inodes, ${volume.snapshots} snapshots, ${formatBytes(volume.used)} used, ${formatBytes(volume.snapshotBytes)} held by snapshots)\n`)
    }
  }))

program.command('volumes')
  .description('list the volumes of a store: space, snapshots, and the snapshot a clone came from')
  .argument('[store]')
  .option('--json', 'machine-readable output')
  .action(async (storeArg: string | undefined, opts: { json?: boolean }) => runAction('snapfs', async () => {
    const store = Store.open(storeArg ?? defaultStore())
    const names = new Map<number, string>()
    for (const { value } of store.volumes.getRange()) names.set(value.id, value.name)
    const volumes = [...store.volumes.getRange()].map(({ value }) => ({
      name: value.name,
      id: value.id,
      used: value.used,
      heldBySnapshots: value.snapshotBytes,
      snapshots: store.snapshots.getKeysCount(prefixRange(volumePrefix(value.id))),
      origin: value.origin === undefined ? null : `${names.get(value.origin.volume) ?? value.origin.volume}@${value.origin.snapshot}`,
      status: value.cloning === undefined ? 'ready' : 'cloning'
    }))
    await store.close()
    if (opts.json === true) {
      process.stdout.write(JSON.stringify(volumes, null, 2) + '\n')
      return
    }
    const rows = [['NAME', 'USED', 'SNAPSHOTS', 'HELD BY SNAPSHOTS', 'ORIGIN', 'STATUS'],
      ...volumes.map(v => [v.name, formatBytes(v.used), String(v.snapshots), formatBytes(v.heldBySnapshots), v.origin ?? '-', v.status])]
    process.stdout.write(formatTable(rows))
  }))

program.command('promote')
  .description('detach a clone from the snapshot it came from, so that snapshot can be deleted (the clone keeps its data)')
  .argument('[store]')
  .argument('<volume>')
  .action(async (first: string, second: string | undefined) => runAction('snapfs', async () => {
    const name = await withUnmountedVolume(first, second, (store, name) => {
      store.root.transactionSync(() => { promote(store, name) })
    })
    process.stdout.write(`volume ${name} no longer depends on a snapshot\n`)
  }))

program.command('delete-volume')
  .description('delete an unmounted volume (a clone no longer wanted) with its snapshots, freeing the blocks only it references')
  .argument('[store]')
  .argument('<volume>')
  .action(async (first: string, second: string | undefined) => runAction('snapfs', async () => {
    const name = await withUnmountedVolume(first, second, (store, name) => {
      const volume = store.root.transactionSync(() => beginVolumeDelete(store, name))
      let gone = false
      while (!gone) gone = store.root.transactionSync(() => volumeDeleteStep(store, volume.id, VOLUME_DELETE_BATCH))
      // LMDB reuses the pages a transaction freed only once a later one has committed.
      store.root.transactionSync(() => { store.meta.putSync('volumeDeleted', name) })
    })
    process.stdout.write(`deleted volume ${name}\n`)
  }))

/**
 * Opens the store of `[store] <volume>` arguments, holds the volume's lock (so no daemon serves
 * it meanwhile) while `body` runs, and closes the store; returns the volume's name.
 */
async function withUnmountedVolume (first: string, second: string | undefined, body: (store: Store, name: string) => void): Promise<string> {
  const name = second ?? first
  const store = Store.open(second === undefined ? defaultStore() : first)
  try {
    const release = acquireVolumeLock(store.dir, name)
    try {
      body(store, name)
    } finally {
      release()
    }
  } finally {
    await store.close()
  }
  return name
}

program.command('check')
  .description('verify every invariant of a store (run it on an unmounted store)')
  .argument('[store]')
  .option('--json', 'machine-readable output')
  .action(async (storeArg: string | undefined, opts: { json?: boolean }) => runAction('snapfs', async () => {
    const store = Store.open(storeArg ?? defaultStore())
    const report = checkStore(store)
    await store.close()
    if (opts.json === true) process.stdout.write(JSON.stringify(report, null, 2) + '\n')
    else {
      for (const problem of report.problems) process.stdout.write(`problem: ${problem}\n`)
      for (const note of report.unfinished) process.stdout.write(`unfinished: ${note}\n`)
      process.stdout.write(`${report.problems.length === 0 ? 'ok' : 'damaged'}: ${report.inodes} inodes, ${report.dirents} entries, ${report.blocks} blocks checked (${report.snapshots} snapshots, ${report.versions} old versions)\n`)
    }
    if (report.problems.length > 0) process.exit(2)
  }))

interface MountFlags {
  foreground?: boolean
  volume: string
  cacheSize: string
  dirtyAge: string
  log?: string
  snapdir: string
  allowOther?: boolean
  transport?: Transport
}

/**
 * Sends the daemon what the kernel still caches for the mount before it unmounts. A write-back
 * error the kernel kept from earlier (a full disk) is not this unmount's failure: the daemon
 * flushes and reports its own state. Returns that error's message, said once the unmount is done
 * (an unmount that fails says why itself).
 */
function flushKernel (mountpoint: string): string | undefined {
  try {
    syncMount(mountpoint)
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

/** The native transport where the addon loads, else fuse-native (said once in the log). */
function defaultTransport (): Transport {
  try {
    nativeExports()
    return 'native'
  } catch (err) {
    process.stderr.write(`snapfs: the native transport is not available (${(err as Error).message}); using fuse-native\n`)
    return 'fuse-native'
  }
}

/** Starts this program with --foreground, detached, and waits until the mount answers. */
async function mountInBackground (storeDir: string, mountpoint: string, opts: MountFlags): Promise<void> {
  const logFile = path.resolve(opts.log ?? path.join(storeDir, `${opts.volume}.log`))
  const log = fs.openSync(logFile, 'a')
  const args = [fileURLToPath(import.meta.url), 'mount', storeDir, mountpoint, '--foreground',
    '--volume', opts.volume, '--cache-size', opts.cacheSize, '--dirty-age', opts.dirtyAge, '--snapdir', opts.snapdir]
  if (opts.transport !== undefined) args.push('--transport', opts.transport)
  if (opts.allowOther === false) args.push('--no-allow-other')
  if (opts.allowOther === true) args.push('--allow-other')
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', log, log] })
  let exited: number | null = null
  child.on('exit', code => { exited = code ?? 1 })
  const deadline = Date.now() + MOUNT_WAIT_MS
  while (Date.now() < deadline) {
    if (exited !== null) {
      const tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-1)[0] ?? ''
      throw new UserError(`the daemon exited (${exited}): ${tail.replace(/^snapfs: /, '')}`)
    }
    const entry = mountAt(mountpoint)
    if (entry?.type === 'fuse.snapfs' && answers(mountpoint)) {
      child.unref()
      process.stdout.write(`mounted ${storeDir} on ${mountpoint} (daemon pid ${child.pid ?? '?'}, log ${logFile})\n`)
      return
    }
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  child.kill('SIGTERM')
  throw new UserError(`the mount did not come up within ${MOUNT_WAIT_MS / 1000} s; see ${logFile}`)
}

await program.parseAsync()
