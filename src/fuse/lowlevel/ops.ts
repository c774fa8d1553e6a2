/**
 * The native transport's operations: the kernel names inodes by node id (nodes.ts), so each
 * request goes straight to the view and inode it names, with no path to resolve. The live volume
 * answers for live nodes; `.snapshots` and the snapshots' inodes are read-only (EROFS for any
 * change). New inodes belong to the caller (with a set-group-ID directory's group), times carry
 * nanoseconds as far as the core keeps them (milliseconds), and the daemon's own changes to the
 * volume (rollback, restore, snapshots made or deleted) are invalidated in the kernel's caches.
 * Nothing here touches the store. Families: names first, then attributes, open files and data,
 * directories, xattrs and the file system as a whole.
 */
import { constants } from 'node:fs'
import createDebug from 'debug'
import { Errno, FsError, fail, toNegativeErrno } from '../../errors.js'
import type { AttrChange, LiveVolume } from '../../fs/volume.js'
import { SNAPSHOT_DIR, type KernelCache, type Snapshots } from '../../fs/snapshots.js'
import { SnapshotView } from '../../fs/snapshot-view.js'
import { S_IFDIR, type Attr as CoreAttr } from '../../fs/inode.js'
import type { DirEntry, ReadView } from '../../fs/view.js'
import { ROOT_INO } from '../../store/records.js'
import { NAME_MAX } from '../../store/keys.js'
import { statfsOf } from '../stat.js'
import { SNAPSHOT_DIR_INO, SnapshotListing } from '../namespace.js'
import { NodeTable, SNAPSHOT_DIR_NODE, VIRTUAL_BASE } from './nodes.js'
import {
  OpenFlags, RenameFlags, SetAttr, type Attr, type AttrChanges, type Entry, type Operations, type Request, type Session,
  replyAttr, replyBuf, replyBufs, replyCreate, replyEntry, replyErr, replyOk, replyOpen, replyReaddir, replyReadlink, replyStatfs,
  replyWrite, replyXattr, requestContext
} from './session.js'

const debug = createDebug('snapfs:fuse')

/** How long the kernel may keep names and attributes: the daemon invalidates what it changes itself. */
const ENTRY_TIMEOUT_S = 1
const ATTR_TIMEOUT_S = 1
/** Kernel nodes invalidated per turn of the event loop after a rollback. */
const INVALIDATION_BATCH = 256
const O_ACCMODE = 3
const O_TRUNC = constants.O_TRUNC
const S_ISGID = 0o2000
const W_OK = constants.W_OK

/** What a node id leads to. */
interface At { view: ReadView, ino: number, writable: boolean }

/**
 * st_ino on this transport: a live inode shows its number; `.snapshots` shows SNAPSHOT_INOS and
 * a snapshot's inode a number of its own above it (snapshot id × 2^32 + its number), so no file
 * of a snapshot shares st_ino with a live file or another snapshot's on the mount's one st_dev
 * (tar, rsync -H and du tell them apart; hard links inside a snapshot still share theirs).
 */
const SNAPSHOT_INOS = 2 ** 48
const SNAPSHOT_INO_SPAN = 2 ** 32

function stIno (view: ReadView, ino: number): number {
  if (view instanceof SnapshotView) return snapshotStIno(view.record.id, ino)
  if (view instanceof SnapshotListing) return SNAPSHOT_INOS
  return ino
}

function snapshotStIno (snapshotId: number, ino: number): number {
  return SNAPSHOT_INOS + snapshotId * SNAPSHOT_INO_SPAN + ino
}

/** An open file or directory: where it lives and the rollback epoch it was opened in. */
interface Handle extends At { epoch: number, listing?: DirEntry[] }

/** What the transport reports in `snapfs status`: what the kernel sends and holds. */
export interface TransportStats {
  /** The largest write request received, in bytes. */
  largestWrite: number
  /** The largest read request received, in bytes. */
  largestRead: number
  /** Nodes the kernel holds lookups of (forgotten ones are dropped). */
  kernelNodes: number
}

/** How the native adapter shows the volume; `initialized` runs once the kernel has taken init's answer. */
export interface NativeOptions { snapdirVisible: boolean, initialized?: () => void }

/**
 * Builds the operations for a mounted volume, and registers what invalidates the kernel's caches;
 * `stats` is kept up to date.
 */
export function nativeOps (volume: LiveVolume, snapshots: Snapshots, options: NativeOptions, session: () => Session | undefined, stats: TransportStats): Operations {
  const nodes = new NodeTable()
  const handles = new Map<number, Handle>()
  let nextHandle = 1

  const listing = new SnapshotListing(volume, snapshots)

  const at = (node: number): At => {
    if (node < VIRTUAL_BASE) return { view: volume, ino: node, writable: true }
    if (node === SNAPSHOT_DIR_NODE) return { view: listing, ino: SNAPSHOT_DIR_INO, writable: false }
    return { ...nodes.snapshotNode(node), writable: false }
  }
  const live = (node: number): number => {
    if (node >= VIRTUAL_BASE) fail('EROFS', 'snapshots are read-only')
    return node
  }
  const handleOf = (fh: number): Handle => {
    const handle = handles.get(fh)
    if (handle === undefined) fail('EBADF', `handle ${fh}`)
    if (handle.view === volume && handle.epoch !== volume.epoch) fail('ESTALE', 'the file was opened before a rollback')
    return handle
  }
  const attrOf = (place: At): Attr => {
    const attr = place.view.getattr(place.ino)
    return kernelAttr({ ...attr, ino: stIno(place.view, place.ino) })
  }
  /** The entry for `name` in directory `parent`, counted as one lookup. */
  const entryOf = (parent: number, name: string, node: number): Entry => {
    const entry: Entry = { ino: node, attr: attrOf(at(node)), attrTimeout: ATTR_TIMEOUT_S, entryTimeout: ENTRY_TIMEOUT_S }
    nodes.looked(parent, name, node)
    stats.kernelNodes = nodes.size
    return entry
  }
  const lookup = (parent: number, name: string): number => {
    if (parent === ROOT_INO && name === SNAPSHOT_DIR) return SNAPSHOT_DIR_NODE
    if (parent === SNAPSHOT_DIR_NODE) {
      const view = snapshots.view(name)
      if (view === undefined) fail('ENOENT', `no snapshot ${name}`)
      return nodes.idOf(view, ROOT_INO)
    }
    if (parent < VIRTUAL_BASE) return volume.lookup(parent, name).ino
    const { view, ino } = nodes.snapshotNode(parent)
    return nodes.idOf(view, view.lookup(ino, name).ino)
  }
  /** The owner of a new inode: the caller, with the group of a set-group-ID directory. */
  const ownerFor = (req: Request, parent: number): { uid: number, gid: number, setgid: boolean } => {
    const caller = requestContext(req)
    const dir = volume.inode(parent)
    const setgid = (dir.mode & S_ISGID) !== 0
    return { uid: caller.uid, gid: setgid ? dir.gid : caller.gid, setgid }
  }
  const addHandle = (handle: Handle): number => {
    while (handles.has(nextHandle)) nextHandle++
    handles.set(nextHandle, handle)
    return nextHandle++
  }
  const openFile = (node: number, flags: number): number => {
    const place = at(node)
    if (!place.writable && ((flags & O_ACCMODE) !== 0 || (flags & O_TRUNC) !== 0)) fail('EROFS', 'snapshots are read-only')
    place.view.open(place.ino)
    // libfuse asks the kernel for atomic O_TRUNC: the truncation comes with the open, not after it.
    if ((flags & O_TRUNC) !== 0 && place.writable) volume.setattr(place.ino, { size: 0 })
    return addHandle({ ...place, epoch: volume.epoch })
  }

  /** Runs an operation's body; an FsError answers its errno, anything else EIO (logged). */
  const run = (op: string, req: Request, body: () => void): void => {
    try {
      body()
    } catch (err) {
      replyErr(req, errnoOf(op, err))
    }
  }
  const runAsync = (op: string, req: Request, body: () => Promise<void>): void => {
    body().catch(err => { replyErr(req, errnoOf(op, err)) })
  }

  snapshots.kernel = invalidations(nodes, session)
  volume.atimeChanged = ino => { session()?.invalidateInode(ino, -1, 0).catch(() => {}) }

  /** Whether the kernel caches writes, and so keeps the times of regular files (agreed at init). */
  let kernelTimes = false

  return {
    init: info => {
      kernelTimes = info.writebackCache
      // libfuse answers init when this returns; the kernel applies the answer as it reads it.
      if (options.initialized !== undefined) setImmediate(options.initialized)
    },
    forget: (node, count) => {
      nodes.forget(node, count)
      stats.kernelNodes = nodes.size
    },

    lookup: (req, parent, name) => run('lookup', req, () => {
      if (Buffer.byteLength(name) > NAME_MAX) fail('ENAMETOOLONG', name)
      replyEntry(req, entryOf(parent, name, lookup(parent, name)))
    }),
    mknod: (req, parent, name, mode, rdev) => run('mknod', req, () => {
      const owner = ownerFor(req, live(parent))
      const inode = volume.mknod(parent, name, mode, rdev, owner)
      replyEntry(req, entryOf(parent, name, inode.ino))
    }),
    mkdir: (req, parent, name, mode) => run('mkdir', req, () => {
      const owner = ownerFor(req, live(parent))
      const inode = volume.mkdir(parent, name, owner.setgid ? mode | S_ISGID : mode, owner)
      replyEntry(req, entryOf(parent, name, inode.ino))
    }),
    symlink: (req, parent, name, target) => run('symlink', req, () => {
      const inode = volume.symlink(live(parent), name, target, ownerFor(req, parent))
      replyEntry(req, entryOf(parent, name, inode.ino))
    }),
    link: (req, node, parent, name) => run('link', req, () => {
      const inode = volume.link(live(node), live(parent), name)
      replyEntry(req, entryOf(parent, name, inode.ino))
    }),
    unlink: (req, parent, name) => run('unlink', req, () => {
      volume.unlink(live(parent), name)
      replyOk(req)
    }),
    rmdir: (req, parent, name) => run('rmdir', req, () => {
      volume.rmdir(live(parent), name)
      replyOk(req)
    }),
    rename: (req, parent, name, newParent, newName, flags) => run('rename', req, () => {
      live(parent)
      live(newParent)
      if ((flags & RenameFlags.EXCHANGE) !== 0) {
        if ((flags & RenameFlags.NOREPLACE) !== 0) fail('EINVAL', 'RENAME_EXCHANGE with RENAME_NOREPLACE')
        volume.exchange(parent, name, newParent, newName)
      } else {
        if ((flags & ~RenameFlags.NOREPLACE) !== 0) fail('EINVAL', `rename flags ${flags}`)
        if ((flags & RenameFlags.NOREPLACE) !== 0 && volume.entries(newParent).has(newName)) fail('EEXIST', newName)
        volume.rename(parent, name, newParent, newName)
      }
      replyOk(req)
    }),

    getattr: (req, node, fh) => run('getattr', req, () => {
      replyAttr(req, attrOf(fh === undefined ? at(node) : handleOf(fh)), ATTR_TIMEOUT_S)
    }),
    setattr: (req, node, changes, toSet, fh) => run('setattr', req, () => {
      const ino = live(fh === undefined ? node : handleOf(fh).ino)
      replyAttr(req, kernelAttr(volume.setattr(ino, coreChange(changes, toSet))), ATTR_TIMEOUT_S)
    }),
    readlink: (req, node) => run('readlink', req, () => {
      const place = at(node)
      replyReadlink(req, place.view.readlink(place.ino))
    }),
    access: (req, node, mask) => run('access', req, () => {
      const place = at(node)
      place.view.getattr(place.ino)
      if ((mask & W_OK) !== 0 && !place.writable) fail('EROFS', 'snapshots are read-only')
      replyOk(req)
    }),

    create: (req, parent, name, mode, flags) => run('create', req, () => {
      const owner = ownerFor(req, live(parent))
      const inode = volume.mknod(parent, name, mode, 0, owner)
      const fh = openFile(inode.ino, flags & ~O_TRUNC)
      replyCreate(req, entryOf(parent, name, inode.ino), fh)
    }),
    // A snapshot's files never change: their pages stay cached across opens. A live file's are
    // dropped at open, so a read reaches the daemon (access times) after a change made outside it.
    open: (req, node, flags) => run('open', req, () => {
      replyOpen(req, openFile(node, flags), node >= VIRTUAL_BASE ? OpenFlags.KEEP_CACHE : 0)
    }),
    read: (req, _node, size, offset, fh) => run('read', req, () => {
      const handle = handleOf(fh)
      stats.largestRead = Math.max(stats.largestRead, size)
      handle.view.readSlices(handle.ino, offset, size, slices => replyBufs(req, slices))
    }),
    write: (req, _node, data, offset, fh) => runAsync('write', req, async () => {
      const handle = handleOf(fh)
      if (!handle.writable) fail('EROFS', 'snapshots are read-only')
      stats.largestWrite = Math.max(stats.largestWrite, data.length)
      replyWrite(req, await volume.write(handle.ino, offset, volume.writesWait ? Buffer.from(data) : data, kernelTimes))
    }),
    flush: (req, _node, fh) => runAsync('flush', req, async () => {
      const handle = handles.get(fh)
      if (handle !== undefined && handle.writable && handle.epoch === volume.epoch) await volume.flush(handle.ino)
      replyOk(req)
    }),
    release: (req, _node, fh) => run('release', req, () => {
      const handle = handles.get(fh)
      handles.delete(fh)
      if (handle !== undefined) handle.view.close(handle.ino)
      replyOk(req)
    }),
    fsync: (req) => runAsync('fsync', req, async () => {
      await volume.fsync()
      replyOk(req)
    }),

    opendir: (req, node) => run('opendir', req, () => {
      const place = at(node)
      const entries = place.view === listing
        ? snapshots.ready().map(({ name, id }) => ({ name, ino: snapshotStIno(id, ROOT_INO), type: S_IFDIR }))
        : place.view.readdir(place.ino).map(entry => ({ ...entry, ino: stIno(place.view, entry.ino) }))
      if (place.writable && place.ino === ROOT_INO && options.snapdirVisible) entries.push({ name: SNAPSHOT_DIR, ino: SNAPSHOT_INOS, type: S_IFDIR })
      replyOpen(req, addHandle({ ...place, epoch: volume.epoch, listing: entries }))
    }),
    readdir: (req, _node, _size, offset, fh) => run('readdir', req, () => {
      const handle = handles.get(fh)
      if (handle?.listing === undefined) fail('EBADF', `directory handle ${fh}`)
      const all: DirEntry[] = [{ name: '.', ino: 0, type: S_IFDIR }, { name: '..', ino: 0, type: S_IFDIR }, ...handle.listing]
      replyReaddir(req, all.slice(offset).map((entry, i) => ({ name: entry.name, offset: offset + i + 1, ino: entry.ino, mode: entry.type })))
    }),
    releasedir: (req, _node, fh) => run('releasedir', req, () => {
      handles.delete(fh)
      replyOk(req)
    }),
    fsyncdir: (req) => runAsync('fsyncdir', req, async () => {
      await volume.fsync()
      replyOk(req)
    }),

    getxattr: (req, node, name, size) => run('getxattr', req, () => {
      const place = at(node)
      answerSized(req, place.view.getxattr(place.ino, name), size)
    }),
    listxattr: (req, node, size) => run('listxattr', req, () => {
      const place = at(node)
      const names = place.view.listxattr(place.ino)
      answerSized(req, Buffer.from(names.map(name => name + '\0').join('')), size)
    }),
    setxattr: (req, node, name, value, flags) => run('setxattr', req, () => {
      volume.setxattr(live(node), name, value, flags)
      replyOk(req)
    }),
    removexattr: (req, node, name) => run('removexattr', req, () => {
      volume.removexattr(live(node), name)
      replyOk(req)
    }),
    statfs: (req) => run('statfs', req, () => {
      const disk = statfsOf(volume.store.dir, volume.inodeCount())
      replyStatfs(req, { ...disk, namemax: 255 } as Parameters<typeof replyStatfs>[1])
    })
  }
}

/** The kernel's invalidations for the daemon's own changes (rollback, restore, `.snapshots`). */
function invalidations (nodes: NodeTable, session: () => Session | undefined): KernelCache {
  const quietly = (promise: Promise<void> | undefined): void => { promise?.catch(() => {}) }
  return {
    volumeChanged: () => {
      const open = session()
      if (open === undefined) return
      const held = [...nodes.liveNodes()]
      // A batch per turn of the event loop, so that tens of thousands of nodes never hold up the
      // requests that come meanwhile.
      const invalidate = (from: number): void => {
        for (const { node, names } of held.slice(from, from + INVALIDATION_BATCH)) {
          quietly(open.invalidateInode(node, 0, 0))
          for (const { parent, name } of names) quietly(open.invalidateEntry(parent, name))
        }
        if (from + INVALIDATION_BATCH < held.length) setImmediate(() => { invalidate(from + INVALIDATION_BATCH) })
        else debug('rollback: invalidated the %d nodes the kernel held of the live volume', held.length)
      }
      quietly(open.invalidateInode(ROOT_INO, 0, 0))
      invalidate(0)
    },
    entriesChanged: (dir, names, inodes) => {
      const open = session()
      if (open === undefined) return
      for (const name of names) quietly(open.invalidateEntry(dir, name))
      for (const ino of [dir, ...inodes]) quietly(open.invalidateInode(ino, -1, 0))
    },
    snapshotsChanged: names => {
      const open = session()
      if (open === undefined) return
      for (const name of names) quietly(open.invalidateEntry(SNAPSHOT_DIR_NODE, name))
      quietly(open.invalidateInode(SNAPSHOT_DIR_NODE, 0, 0))
    }
  }
}

/** A getxattr/listxattr answer: the size for size 0, the bytes if they fit, ERANGE otherwise. */
function answerSized (req: Request, value: Buffer, size: number): void {
  if (size === 0) replyXattr(req, value.length)
  else if (value.length > size) replyErr(req, Errno.ERANGE)
  else replyBuf(req, value)
}

/** The core's attributes (times in ms, nanoseconds within apart) as the kernel takes them. */
function kernelAttr (attr: CoreAttr): Attr {
  const split = (ms: number, ns = 0): [number, number] => {
    const sec = Math.floor(ms / 1000)
    return [sec, (ms - sec * 1000) * 1e6 + ns]
  }
  const [atimeSec, atimeNsec] = split(attr.atime, attr.ns?.a)
  const [mtimeSec, mtimeNsec] = split(attr.mtime, attr.ns?.m)
  const [ctimeSec, ctimeNsec] = split(attr.ctime, attr.ns?.c)
  return {
    ino: attr.ino,
    mode: attr.mode,
    nlink: attr.nlink,
    uid: attr.uid,
    gid: attr.gid,
    rdev: attr.rdev,
    size: attr.size,
    blocks: attr.blocks,
    blksize: attr.blksize,
    atimeSec,
    atimeNsec,
    mtimeSec,
    mtimeNsec,
    ctimeSec,
    ctimeNsec
  }
}

/** A setattr request as the core's change (times to ms; *_NOW is the daemon's clock). */
function coreChange (changes: AttrChanges, toSet: number): AttrChange {
  const ms = (sec = 0, nsec = 0): number => sec * 1000 + Math.floor(nsec / 1e6)
  const within = (nsec = 0): number => nsec % 1e6
  const change: AttrChange = {}
  if ((toSet & SetAttr.MODE) !== 0) change.mode = changes.mode
  if ((toSet & SetAttr.UID) !== 0) change.uid = changes.uid
  if ((toSet & SetAttr.GID) !== 0) change.gid = changes.gid
  if ((toSet & SetAttr.SIZE) !== 0) change.size = changes.size
  if ((toSet & SetAttr.ATIME_NOW) !== 0) change.atime = Date.now()
  else if ((toSet & SetAttr.ATIME) !== 0) {
    change.atime = ms(changes.atimeSec, changes.atimeNsec)
    change.atimeNs = within(changes.atimeNsec)
  }
  if ((toSet & SetAttr.MTIME_NOW) !== 0) change.mtime = Date.now()
  else if ((toSet & SetAttr.MTIME) !== 0) {
    change.mtime = ms(changes.mtimeSec, changes.mtimeNsec)
    change.mtimeNs = within(changes.mtimeNsec)
  }
  // With the writeback cache the kernel keeps the times of the writes it caches and sends them here.
  if ((toSet & SetAttr.CTIME) !== 0) {
    change.ctime = ms(changes.ctimeSec, changes.ctimeNsec)
    change.ctimeNs = within(changes.ctimeNsec)
  }
  return change
}

function errnoOf (op: string, err: unknown): number {
  if (!(err instanceof FsError)) debug('%s failed: %O', op, err)
  return -toNegativeErrno(err)
}
