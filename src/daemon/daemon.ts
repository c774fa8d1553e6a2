/**
 * The mount daemon: opens the store, clears a stale mount of its own at the mount point, mounts
 * the live volume through the native transport (fuse/lowlevel/, the default where the addon
 * loads) or fuse-native, serves the control socket, and shuts down in the order
 * flush → unmount → flush what the unmount released → close the store, on `snapfs umount`,
 * SIGTERM or SIGINT. It runs in its own process: a synchronous fs call on the mount from this
 * process would block the thread that must answer it.
 */
import fs from 'node:fs'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import createDebug from 'debug'
import { UserError } from '../errors.js'
import { Store } from '../store/store.js'
import { LiveVolume } from '../fs/volume.js'
import { FuseWithOptions, fuseOptionList } from '../fuse/mount-options.js'
import { mountOps } from '../fuse/ops.js'
import { nativeOps, type TransportStats } from '../fuse/lowlevel/ops.js'
import { MAX_WRITE, Session } from '../fuse/lowlevel/session.js'
import { Snapshots } from '../fs/snapshots.js'
import { ControlServer } from '../control/server.js'
import { socketPath } from '../control/socket-path.js'
import type { MountStatus } from '../control/protocol.js'
import { answers, fuseUnmount, mountAt, setReadahead } from './mounts.js'
import { acquireVolumeLock } from './lock.js'

const debug = createDebug('snapfs:daemon')

/** A FUSE op that takes longer than this is answered with ETIMEDOUT by fuse-native. */
const OP_TIMEOUT_MS = 120_000

export interface DaemonOptions {
  store: string
  volume: string
  mountpoint: string
  cacheBytes: number
  dirtyAgeMs: number
  allowOther: boolean
  snapdirVisible: boolean
  transport: Transport
}

/** The libfuse 3 low-level transport of native/, or fuse-native (libfuse 2, by path). */
export type Transport = 'native' | 'fuse-native'

/** Page cache of each snapshot view being browsed, at most this share of the live cache. */
const VIEW_CACHE_SHARE = 8

/** Lifecycle lines for the daemon's log, whatever DEBUG says. */
function log (message: string): void {
  process.stderr.write(`${new Date().toISOString()} snapfs[${process.pid}] ${message}\n`)
}

/** Mounts and serves until unmounted; resolves with the exit code. */
export async function runDaemon (options: DaemonOptions): Promise<number> {
  // lmdb-js rejects internal promises nobody awaits when a commit fails (a full disk); the failure
  // already reached the operation that waited for the commit, so it must not also end the daemon.
  process.on('unhandledRejection', reason => {
    log(`unhandled rejection: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`)
  })
  const mountpoint = options.mountpoint
  prepareMountpoint(mountpoint)
  const store = Store.open(options.store)
  const releaseLock = acquireVolumeLock(store.dir, options.volume)
  const record = store.volume(options.volume)
  if (record.deleting === true) {
    releaseLock()
    await store.close()
    throw new UserError(`volume ${options.volume} is being deleted; finish with: snapfs delete-volume ${store.dir} ${options.volume}`)
  }
  if (record.cloning !== undefined) {
    releaseLock()
    await store.close()
    throw new UserError(`volume ${options.volume} is still being cloned from snapshot ${record.origin?.snapshot ?? '?'}; mount its origin volume to let the copy finish`)
  }
  const volume = new LiveVolume(store, record, { cacheBytes: options.cacheBytes, dirtyAgeMs: options.dirtyAgeMs })
  const orphans = await volume.recoverOrphans()
  if (orphans > 0) log(`freed ${orphans} files left open and unlinked by an earlier daemon`)
  volume.writeback.startTimer()
  const snapshots = new Snapshots(volume, Math.max(4 * 1024 * 1024, Math.floor(options.cacheBytes / VIEW_CACHE_SHARE)))
  snapshots.resume()

  const fsname = `snapfs:${store.dir}`
  let session: Session | undefined
  const stats: TransportStats = { largestWrite: 0, largestRead: 0, kernelNodes: 0 }
  const mount = options.transport === 'native'
    ? async (): Promise<void> => {
      // Sequential reads come in requests as large as writes once the read-ahead is raised; the
      // kernel sets it from init's answer, so it is raised after. A cold read of 1 GiB measured
      // 804 -> 986 MB/s (medians of three, fresh mounts after drop_caches).
      const initialized = (): void => {
        try {
          setReadahead(mountpoint, MAX_WRITE)
        } catch (err) {
          debug('read-ahead left at the kernel\'s default: %s', (err as Error).message)
        }
      }
      const ops = nativeOps(volume, snapshots, { snapdirVisible: options.snapdirVisible, initialized }, () => session, stats)
      session = Session.mount(mountpoint, ops, {
        fsname,
        subtype: 'snapfs',
        allowOther: options.allowOther,
        // The kernel keeps written pages and sends them in 1 MiB requests; the daemon's page
        // cache and its commits stay the only way data reaches the store.
        writebackCache: true,
        maxWrite: MAX_WRITE,
        onError: (error, op) => { log(`the ${op} handler failed: ${error instanceof Error ? error.stack ?? error.message : String(error)}`) }
      })
    }
    : async (): Promise<void> => {
      const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
      const fuse = new FuseWithOptions(mountpoint, mountOps(volume, snapshots, { owner, snapdirVisible: options.snapdirVisible }),
        fuseOptionList({ fsname, allowOther: options.allowOther }), OP_TIMEOUT_MS)
      await new Promise<void>((resolve, reject) => { fuse.mount(err => err === null ? resolve() : reject(err)) })
    }

  /**
   * Flushes, unmounts and closes the store. Forced, the unmount is lazy and goes on when what the
   * daemon holds cannot be committed (a full disk): it resolves with why that was lost.
   */
  let exiting: Promise<string | undefined> | null = null
  const shutdown = async (force: boolean): Promise<string | undefined> => {
    if (exiting !== null) return await exiting
    exiting = (async () => {
      log(`unmounting ${mountpoint}`)
      let lost: string | undefined
      try {
        await volume.flush()
      } catch (err) {
        if (!force) {
          exiting = null
          throw new UserError(`cannot unmount ${mountpoint}: ${(err as Error).message}; what is not committed stays in memory: make room (deleting files on the mount does) and unmount again, or unmount with --force and lose it`)
        }
        lost = (err as Error).message
        log(`unmounting without the changes that could not be committed: ${lost}`)
      }
      try {
        await fuseUnmount(mountpoint, force)
      } catch (err) {
        exiting = null
        throw new UserError(`cannot unmount ${mountpoint}: ${(err as Error).message}`)
      }
      await session?.close()
      volume.writeback.stopTimer()
      await snapshots.stop()
      control.close()
      if (lost === undefined) {
        await volume.fsync()
        await store.close()
      }
      // Else the store is left as its last commit made it: lmdb-js never finishes closing an
      // environment after a failed commit, and the process ends next.
      releaseLock()
      log(lost === undefined ? 'unmounted, store closed' : 'unmounted, store left as last committed')
      return lost
    })()
    return await exiting
  }

  const control = await ControlServer.listen(socketPath(mountpoint), {
    status: (): MountStatus => ({
      pid: process.pid,
      store: store.dir,
      volume: options.volume,
      mountpoint,
      cacheBytes: volume.cache.maxPages * volume.blockSize,
      residentBytes: volume.cache.residentPages * volume.blockSize,
      dirtyBytes: volume.cache.dirtyPages * volume.blockSize,
      transport: options.transport,
      ...options.transport === 'native' ? stats : {}
    }),
    sync: async () => { await volume.fsync() },
    'snapshot.create': async (args) => await snapshots.create(String(args.name ?? ''), String(args.description ?? '')),
    'snapshot.list': async () => await snapshots.list(),
    'snapshot.show': async (args) => await snapshots.show(String(args.name ?? '')),
    'snapshot.delete': async (args) => await snapshots.delete(String(args.name ?? ''), args.wait !== false),
    'snapshot.diff': async (args) => await snapshots.diff(String(args.from ?? ''), args.to === undefined || args.to === null ? undefined : String(args.to)),
    'snapshot.restore': async (args) => await snapshots.restore(String(args.name ?? ''), String(args.path ?? ''), typeof args.to === 'string' ? args.to : undefined),
    'snapshot.rollback': async (args) => await snapshots.rollback(String(args.name ?? ''), {
      dryRun: args.dryRun === true, safety: args.safety !== false, force: args.force === true, wait: args.wait !== false
    }),
    jobs: async () => snapshots.jobs(),
    'snapshot.clone': async (args) => await snapshots.clone(String(args.name ?? ''), String(args.volume ?? ''), args.wait !== false),
    'snapshot.quota': async (args) => await snapshots.quota(quotaChange(args)),
    unmount: async (args) => {
      const lost = await shutdown(args.force === true)
      setImmediate(() => process.exit(lost === undefined ? 0 : 1))
      return { unmounted: mountpoint, lost: lost ?? null }
    }
  })

  await mount().catch(async err => {
    control.close()
    await store.close()
    releaseLock()
    throw new UserError(`cannot mount ${mountpoint}: ${(err as Error).message}`)
  })
  log(`mounted ${store.dir} (volume ${options.volume}) on ${mountpoint} through ${options.transport}`)
  process.stdout.write(`mounted ${store.dir} on ${mountpoint}\n`)

  return await new Promise<number>(resolve => {
    const onSignal = (signal: string): void => {
      log(`${signal}: flushing and unmounting`)
      shutdown(false).catch(async () => await shutdown(true)).then(lost => { resolve(lost === undefined ? 0 : 1) }, err => {
        log(`shutdown failed: ${(err as Error).message}`)
        resolve(1)
      })
    }
    process.on('SIGTERM', () => onSignal('SIGTERM'))
    process.on('SIGINT', () => onSignal('SIGINT'))
    debug('serving %s', mountpoint)
  })
}

/** The quota fields a `snapshot.quota` request sets: a count or byte limit, null to lift it. */
function quotaChange (args: Record<string, unknown>): { maxSnapshots?: number | null, maxSnapshotBytes?: number | null } {
  const limit = (value: unknown, what: string): number | null | undefined => {
    if (value === undefined) return undefined
    if (value === null) return null
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new UserError(`invalid ${what} ${String(value)}`)
    return value
  }
  return { maxSnapshots: limit(args.maxCount, 'snapshot count limit'), maxSnapshotBytes: limit(args.maxBytes, 'snapshot size limit') }
}

/** Creates a missing mount point; clears a dead mount left there; refuses a live one. */
function prepareMountpoint (mountpoint: string): void {
  const existing = mountAt(mountpoint)
  if (existing !== undefined) {
    if (answers(mountpoint)) {
      throw new UserError(`${mountpoint} is busy: ${existing.type} from ${existing.source} is mounted there`)
    }
    log(`clearing the dead mount at ${mountpoint} (${existing.source})`)
    clearDeadMount(mountpoint)
  }
  if (!fs.existsSync(mountpoint)) fs.mkdirSync(mountpoint, { recursive: true })
  if (!fs.statSync(mountpoint).isDirectory()) throw new UserError(`${mountpoint} is not a directory`)
  if (path.resolve(mountpoint) === '/') throw new UserError('cannot mount over /')
}

function clearDeadMount (mountpoint: string): void {
  for (const [command, ...args] of [['fusermount', '-uz', mountpoint], ['umount', '-l', mountpoint]]) {
    spawnSync(command, args, { stdio: 'ignore' })
    if (mountAt(mountpoint) === undefined) return
  }
  throw new UserError(`cannot clear the dead mount at ${mountpoint}`)
}
