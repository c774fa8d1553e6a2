/**
 * The fuse-native operations: each finds the view and inode a path leads to (namespace.ts: the
 * live volume, or a read-only snapshot under `.snapshots/`), calls it, and answers with 0, a
 * result, or a negative errno (errors.ts). Every change is refused with EROFS under
 * `.snapshots`. Nothing here touches the store. Families: attributes and names first, then open
 * files and data, then xattrs and the file system as a whole.
 */
import { constants } from 'node:fs'
import createDebug from 'debug'
import { toNegativeErrno, FsError } from '../errors.js'
import type { LiveVolume, Owner } from '../fs/volume.js'
import type { Snapshots } from '../fs/snapshots.js'
import type { ReadView } from '../fs/view.js'
import { fail } from '../errors.js'
import { PathTable, isHiddenName } from './paths.js'
import { Namespace } from './namespace.js'
import { statfsOf } from './stat.js'

const debug = createDebug('snapfs:fuse')

type Cb = (code: number, ...results: unknown[]) => void
type Op = (...args: any[]) => void

const O_APPEND = constants.O_APPEND
const O_TRUNC = constants.O_TRUNC
const O_ACCMODE = 3
/** Times below this many ms are libfuse's UTIME_NOW/UTIME_OMIT markers, not real times. */
const SPECIAL_TIME_MS = 2000

/** An open file: where it lives, and the volume's rollback epoch when it was opened. */
interface Handle { view: ReadView, ino: number, append: boolean, writable: boolean, epoch: number }

/** fuse-native handles are 32-bit; they are reused only after 2^32 opens. */
class HandleTable {
  private next = 1
  private readonly handles = new Map<number, Handle>()

  add (handle: Handle): number {
    while (this.handles.has(this.next) || this.next === 0) this.next = (this.next + 1) >>> 0
    const fh = this.next
    this.next = (this.next + 1) >>> 0
    this.handles.set(fh, handle)
    return fh
  }

  get (fh: number): Handle | undefined {
    return this.handles.get(fh)
  }

  remove (fh: number): Handle | undefined {
    const handle = this.handles.get(fh)
    this.handles.delete(fh)
    return handle
  }
}

export interface OpsOptions {
  /** The owner new inodes get. */
  owner: Owner
  /** Whether the root's listing shows `.snapshots`. */
  snapdirVisible: boolean
}

/** Builds the operation table for a mounted volume and its snapshots. */
export function mountOps (volume: LiveVolume, snapshots: Snapshots, options: OpsOptions): Record<string, Op> {
  const owner = options.owner
  const paths = new PathTable(volume)
  const names = new Namespace(paths, volume, snapshots, options.snapdirVisible)
  const handles = new HandleTable()

  /** Runs a synchronous core call and answers; any FsError becomes its errno. */
  const sync = (name: string, cb: Cb, body: () => unknown): void => {
    let result: unknown
    try {
      result = body()
    } catch (err) {
      answerError(name, cb, err)
      return
    }
    if (result === undefined) cb(0)
    else cb(0, result)
  }
  const later = (name: string, cb: Cb, body: () => Promise<unknown>): void => {
    body().then(result => { result === undefined ? cb(0) : cb(0, result) }, err => answerError(name, cb, err))
  }
  /** The live inode at `path`, refusing paths under `.snapshots`. */
  const live = (path: string): number => {
    names.writable(path)
    return paths.resolve(path)
  }
  /** The live parent directory and last name of `path`, refusing paths under `.snapshots`. */
  const liveParent = (path: string): { parent: number, name: string } => {
    names.writable(path)
    return paths.parent(path)
  }
  const located = (path: string, fh?: number): { view: ReadView, ino: number, writable: boolean } => {
    const handle = fh === undefined || fh === 0 ? undefined : handles.get(fh)
    if (handle === undefined) return names.locate(path)
    if (handle.view === volume && handle.epoch !== volume.epoch) fail('ESTALE', 'the file was opened before a rollback')
    return handle
  }
  const openHandle = (at: { view: ReadView, ino: number, writable: boolean }, flags: number): number => {
    if (!at.writable && ((flags & O_ACCMODE) !== 0 || (flags & O_TRUNC) !== 0)) fail('EROFS', 'snapshots are read-only')
    at.view.open(at.ino)
    return handles.add({ ...at, append: (flags & O_APPEND) !== 0 && (flags & O_ACCMODE) !== 0, epoch: volume.epoch })
  }
  /** The live inode an open handle (or else `path`) refers to, refusing snapshot handles. */
  const liveInoOf = (path: string, fh: number): number => {
    const at = located(path, fh)
    if (!at.writable) fail('EROFS', 'snapshots are read-only')
    return at.ino
  }
  const time = (ms: number): number => ms < SPECIAL_TIME_MS ? Date.now() : ms

  return {
    init: (cb: Cb) => cb(0),
    access: (path: string, _mode: number, cb: Cb) => sync('access', cb, () => { names.locate(path) }),
    statfs: (_path: string, cb: Cb) => sync('statfs', cb, () => statfsOf(volume.store.dir, volume.inodeCount())),
    getattr: (path: string, cb: Cb) => sync('getattr', cb, () => names.getattr(names.locate(path))),
    fgetattr: (path: string, fh: number, cb: Cb) => sync('fgetattr', cb, () => names.getattr(located(path, fh))),
    readlink: (path: string, cb: Cb) => sync('readlink', cb, () => {
      const at = names.locate(path)
      return at.view.readlink(at.ino)
    }),
    chmod: (path: string, mode: number, cb: Cb) => sync('chmod', cb, () => { volume.setattr(live(path), { mode }) }),
    chown: (path: string, uid: number, gid: number, cb: Cb) => sync('chown', cb, () => { volume.setattr(live(path), { uid, gid }) }),
    // fuse-native 2.2.6 passes the access time in both time arguments (its mtime is lost).
    utimens: (path: string, atime: number, mtime: number, cb: Cb) =>
      sync('utimens', cb, () => { volume.setattr(live(path), { atime: time(atime), mtime: time(mtime) }) }),
    truncate: (path: string, size: number, cb: Cb) => sync('truncate', cb, () => { volume.setattr(live(path), { size }) }),
    ftruncate: (path: string, fh: number, size: number, cb: Cb) => sync('ftruncate', cb, () => { volume.setattr(liveInoOf(path, fh), { size }) }),

    mknod: (path: string, mode: number, rdev: number, cb: Cb) => sync('mknod', cb, () => {
      const { parent, name } = liveParent(path)
      volume.mknod(parent, name, mode, rdev, owner)
    }),
    mkdir: (path: string, mode: number, cb: Cb) => sync('mkdir', cb, () => {
      const { parent, name } = liveParent(path)
      volume.mkdir(parent, name, mode, owner)
    }),
    symlink: (target: string, path: string, cb: Cb) => sync('symlink', cb, () => {
      const { parent, name } = liveParent(path)
      volume.symlink(parent, name, target, owner)
    }),
    link: (from: string, to: string, cb: Cb) => sync('link', cb, () => {
      const { parent, name } = liveParent(to)
      volume.link(live(from), parent, name)
    }),
    unlink: (path: string, cb: Cb) => sync('unlink', cb, () => {
      names.writable(path)
      if (paths.dropHidden(path)) return
      const { parent, name } = paths.parent(path)
      volume.unlink(parent, name)
    }),
    rmdir: (path: string, cb: Cb) => sync('rmdir', cb, () => {
      const { parent, name } = liveParent(path)
      volume.rmdir(parent, name)
    }),
    rename: (from: string, to: string, cb: Cb) => sync('rename', cb, () => {
      const source = liveParent(from)
      const target = liveParent(to)
      if (isHiddenName(target.name)) {
        const ino = paths.resolve(from)
        volume.unlink(source.parent, source.name)
        paths.addHidden(to, ino)
        return
      }
      volume.rename(source.parent, source.name, target.parent, target.name)
    }),

    opendir: (path: string, _flags: number, cb: Cb) => sync('opendir', cb, () => {
      names.readdir(names.locate(path))
      return 0
    }),
    releasedir: (_path: string, _fh: number, cb: Cb) => cb(0),
    readdir: (path: string, cb: Cb) => {
      try {
        const entries = names.readdir(names.locate(path))
        const list = ['.', '..']
        const stats: Array<{ mode: number, ino: number }> = [{ mode: 0o40000, ino: 0 }, { mode: 0o40000, ino: 0 }]
        for (const entry of entries) {
          list.push(entry.name)
          stats.push({ mode: entry.type, ino: entry.ino })
        }
        cb(0, list, stats)
      } catch (err) {
        answerError('readdir', cb, err)
      }
    },
    create: (path: string, mode: number, cb: Cb) => sync('create', cb, () => {
      const { parent, name } = liveParent(path)
      const inode = volume.mknod(parent, name, mode, 0, owner)
      return openHandle({ view: volume, ino: inode.ino, writable: true }, 0)
    }),
    open: (path: string, flags: number, cb: Cb) => sync('open', cb, () => openHandle(names.locate(path), flags)),
    release: (_path: string, fh: number, cb: Cb) => {
      const handle = handles.remove(fh)
      if (handle !== undefined) handle.view.close(handle.ino)
      cb(0)
    },
    read: (path: string, fh: number, buf: Buffer, length: number, offset: number, cb: (n: number) => void) => {
      try {
        const at = located(path, fh)
        cb(at.view.read(at.ino, offset, length, buf))
      } catch (err) {
        cb(negativeErrno('read', err))
      }
    },
    write: (path: string, fh: number, buf: Buffer, length: number, offset: number, cb: (n: number) => void) => {
      let ino: number
      let at = offset
      try {
        ino = liveInoOf(path, fh)
        if (handles.get(fh)?.append === true) at = volume.inode(ino).size
      } catch (err) {
        cb(negativeErrno('write', err))
        return
      }
      // fuse-native detaches `buf` when this callback returns: a write that must wait keeps a copy.
      const data = length === buf.length ? buf : buf.subarray(0, length)
      volume.write(ino, at, volume.writesWait ? Buffer.from(data) : data).then(cb, err => cb(negativeErrno('write', err)))
    },
    flush: (path: string, fh: number, cb: Cb) => later('flush', cb, async () => {
      const handle = handles.get(fh)
      if (handle !== undefined && handle.epoch !== volume.epoch) return
      const at = located(path, fh)
      if (at.writable) await volume.flush(at.ino)
    }),
    fsync: (_path: string, _datasync: number, _fh: number, cb: Cb) => later('fsync', cb, async () => { await volume.fsync() }),
    fsyncdir: (_path: string, _datasync: number, _fh: number, cb: Cb) => later('fsyncdir', cb, async () => { await volume.fsync() }),

    getxattr: (path: string, name: string, _position: number, cb: Cb) => sync('getxattr', cb, () => {
      const at = names.locate(path)
      return at.view.getxattr(at.ino, name)
    }),
    listxattr: (path: string, cb: Cb) => sync('listxattr', cb, () => {
      const at = names.locate(path)
      return at.view.listxattr(at.ino)
    }),
    setxattr: (path: string, name: string, value: Buffer, _position: number, flags: number, cb: Cb) =>
      sync('setxattr', cb, () => { volume.setxattr(live(path), name, value, flags) }),
    removexattr: (path: string, name: string, cb: Cb) => sync('removexattr', cb, () => { volume.removexattr(live(path), name) })
  }
}

function negativeErrno (op: string, err: unknown): number {
  if (!(err instanceof FsError)) debug('%s failed: %O', op, err)
  return toNegativeErrno(err)
}

function answerError (op: string, cb: Cb, err: unknown): void {
  cb(negativeErrno(op, err))
}
