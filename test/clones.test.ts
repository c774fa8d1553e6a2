/**
 * Clones on real mounts: `snapctl clone NAME VOLUME` makes a volume of the same store that shows
 * exactly what the snapshot shows (bytes, modes, owners, times, hard links, symlinks, a fifo,
 * xattrs) while sharing every block, so the store file grows by records only (under 4 MiB for
 * 64 MiB of data). The clone and its origin, mounted side by side by two daemons, never see each
 * other's writes, even when two writers overwrite the same shared file on both at once, and
 * `snapfs check` passes afterwards: two mounts of one store do not corrupt each other. A snapshot
 * with a clone cannot be deleted (the refusal names the clone) until the clone is promoted, which
 * is refused while the clone is mounted; a promoted clone keeps its data and its own snapshots;
 * `snapfs delete-volume` frees exactly the blocks only that volume referenced, and the store file
 * reuses their pages for the next writes. A clone whose copy is cut by kill -9 of the origin's
 * daemon is listed as cloning, cannot be mounted, leaves a store that `snapfs check` finds sound,
 * and is finished by the next mount of the origin, whole.
 */
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import {
  chmod, chown, lchown, link, lutimes, mkdir, open, readdir, readFile, stat, symlink, writeFile
} from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ctl, ctlJson, ctlOk, failsWithOneLine, listSnapshots, type SnapshotInfo } from './helpers/ctl.js'
import { mountFresh, mountsAt, run, sha, snapctl, snapfs, type Mounted, type RunResult } from './helpers/mount.js'
import { capture, mkfifo, setTimes, settledCapture, setXattr, type Tree } from './helpers/tree.js'

t.setTimeout(10 * 60_000)

const KiB = 1024
const MiB = 1024 * KiB
/** One data block of the store. */
const BLOCK = 64 * KiB
/** What the store file may grow by while a 64 MiB snapshot is cloned: the records, not the data. */
const RECORD_SLACK = 4 * MiB
/** How long a background daemon may take to exit after `snapfs umount`. */
const EXIT_LIMIT_MS = 60_000

interface VolumeJson {
  name: string
  id: number
  used: number
  heldBySnapshots: number
  snapshots: number
  origin: string | null
  status: 'ready' | 'cloning'
}

interface CheckJson { problems: string[], inodes: number, dirents: number, blocks: number, snapshots: number, versions: number }

/** A volume of a test's store mounted in the background by `snapfs mount --volume`. */
interface VolumeMount {
  mnt: string
  pid: number
  /** `snapfs umount`, then waits until the daemon is gone (its lock on the volume released). */
  umount(): Promise<void>
}

/** Whether process `pid` has ended (a zombie left for its reaper counts as ended). */
async function ended (pid: number): Promise<boolean> {
  try {
    const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')
    return fields[fields.length - 1].startsWith('Z')
  } catch {
    return true
  }
}

async function waitEnded (pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await ended(pid)) return true
    await sleep(50)
  }
  return await ended(pid)
}

/**
 * Runs `snapfs mount STORE --volume VOLUME MNT` (background daemon), with a teardown registered
 * first that unmounts whatever it leaves mounted (lazily if `snapfs umount` fails) and ends its
 * daemon. Returns what the command printed and the daemon's pid when it mounted.
 */
async function tryMountVolume (t: Test, m: Mounted, volume: string, mnt: string): Promise<{ r: RunResult, pid: number }> {
  await mkdir(mnt, { recursive: true })
  let pid = -1
  t.teardown(async () => {
    if ((await mountsAt(mnt)).length > 0) {
      const r = await snapfs(['umount', mnt], { timeoutMs: 30_000 }).catch(() => undefined)
      if (r?.code !== 0) await run('umount', ['-l', mnt], { timeoutMs: 10_000 }).catch(() => undefined)
    }
    if (pid > 0 && !(await waitEnded(pid, 15_000))) {
      try { process.kill(pid, 'SIGKILL') } catch { /* gone meanwhile */ }
    }
  })
  const r = await snapfs(['mount', m.store, '--volume', volume, mnt])
  pid = Number(/daemon pid (\d+)/.exec(r.stdout)?.[1] ?? -1)
  return { r, pid }
}

async function mountVolume (t: Test, m: Mounted, volume: string, mnt: string): Promise<VolumeMount> {
  const { r, pid } = await tryMountVolume(t, m, volume, mnt)
  if (r.code !== 0 || pid <= 0) throw new Error(`snapfs mount --volume ${volume} exited with ${r.code}: ${r.stdout}${r.stderr}`)
  return {
    mnt,
    pid,
    umount: async () => {
      const u = await snapfs(['umount', mnt])
      if (u.code !== 0) throw new Error(`snapfs umount ${mnt} exited with ${u.code}: ${u.stderr}`)
      if (!(await waitEnded(pid, EXIT_LIMIT_MS))) throw new Error(`daemon ${pid} of ${mnt} still runs ${EXIT_LIMIT_MS} ms after snapfs umount`)
    }
  }
}

async function volumes (t: Test, store: string): Promise<VolumeJson[]> {
  const r = await snapfs(['volumes', store, '--json'])
  t.equal(r.code, 0, `snapfs volumes exits 0 ${r.stderr}`)
  return JSON.parse(r.stdout) as VolumeJson[]
}

async function volumeNamed (t: Test, store: string, name: string): Promise<VolumeJson | undefined> {
  return (await volumes(t, store)).find(v => v.name === name)
}

/** A volume's status as `snapfs volumes` shows it (read while the origin's daemon copies). */
async function statusOf (store: string, name: string): Promise<string> {
  const r = await snapfs(['volumes', store, '--json'])
  if (r.code !== 0) return `snapfs volumes exited with ${r.code}: ${r.stderr.trim()}`
  return (JSON.parse(r.stdout) as VolumeJson[]).find(v => v.name === name)?.status ?? 'not listed'
}

/** snapctl on a clone's mount point, which must succeed; returns its stdout. */
async function ctlAt (t: Test, mnt: string, args: string[]): Promise<string> {
  const r = await snapctl(['-C', mnt, ...args], { cwd: '/' })
  t.equal(r.code, 0, `snapctl -C ${mnt} ${args.join(' ')} exits 0 ${r.stderr}`)
  return r.stdout
}

/** `snapfs check --json` on an unmounted store: it must exit 0 and find no problem. */
async function checkStore (t: Test, store: string, when: string): Promise<CheckJson> {
  const r = await snapfs(['check', store, '--json'])
  t.equal(r.code, 0, `snapfs check exits 0 ${when} ${r.stderr}`)
  const report = JSON.parse(r.stdout) as CheckJson
  t.same(report.problems, [], `snapfs check finds no problem ${when}`)
  return report
}

/** The store file's size once everything the system holds for it is written. */
async function storeSize (m: Mounted): Promise<number> {
  await run('sync', [])
  return (await stat(join(m.store, 'data.mdb'))).size
}

/** The inodes of a captured tree: what a clone of it holds. */
function inodesOf (tree: Tree): number {
  return new Set(Object.values(tree).map(node => node.inode)).size
}

function without (tree: Tree, ...paths: string[]): Tree {
  return Object.fromEntries(Object.entries(tree).filter(([path]) => !paths.includes(path)))
}

/**
 * A volume's content for the fidelity test, at `root`: a 64 MiB file of random data, three names
 * of one inode in three directories, symlinks (relative, absolute, dangling) with their own
 * owner, a fifo, xattrs on a file and on a directory, owners, a setuid file, an empty file and
 * an empty directory, every time set by hand. Returns the big file's bytes.
 */
async function populate (t: Test, root: string): Promise<Buffer> {
  await mkdir(join(root, 'src', 'deep', 'er'), { recursive: true })
  await mkdir(join(root, 'lib'))
  await mkdir(join(root, 'emptydir'))
  const big = randomBytes(64 * MiB)
  await writeFile(join(root, 'big'), big)
  const readme = join(root, 'README')
  await writeFile(readme, 'read me\n')
  await chown(readme, 1234, 5678)
  await chmod(readme, 0o640)
  await setXattr(t, readme, 'user.color', 'blue')
  await setXattr(t, readme, 'user.bin', '0x00ff0000fe')
  await setXattr(t, readme, 'user.empty')
  await writeFile(join(root, 'setuid'), '#!/bin/sh\n')
  await chmod(join(root, 'setuid'), 0o4755)
  await writeFile(join(root, 'empty'), '')
  await writeFile(join(root, 'src', 'a.txt'), 'one inode, three names\n')
  await link(join(root, 'src', 'a.txt'), join(root, 'lib', 'a-link'))
  await link(join(root, 'src', 'a.txt'), join(root, 'src', 'deep', 'er', 'a3'))
  await writeFile(join(root, 'src', 'deep', 'leaf.txt'), 'leaf\n')
  await chown(join(root, 'src', 'deep', 'leaf.txt'), 7, 8)
  await symlink('../src/a.txt', join(root, 'lib', 'rel'))
  await symlink('/etc/hostname', join(root, 'lib', 'abs'))
  await symlink('no/such/target', join(root, 'lib', 'dangling'))
  await lchown(join(root, 'lib', 'rel'), 7, 8)
  await mkfifo(t, join(root, 'pipe'), 0o620)
  await chown(join(root, 'pipe'), 99, 98)
  await chown(join(root, 'src', 'deep'), 1000, 1000)
  await setXattr(t, join(root, 'src', 'deep', 'er'), 'user.on-dir', 'er')
  const files = ['big', 'README', 'setuid', 'empty', 'src/a.txt', 'src/deep/leaf.txt', 'pipe']
  for (const [i, file] of files.entries()) await setTimes(join(root, file), 1_600_000_000_250 + i * 86_400_500)
  for (const [i, symbolic] of ['lib/rel', 'lib/abs', 'lib/dangling'].entries()) {
    await lutimes(join(root, symbolic), new Date(1_550_000_000_125 + i * 1000), new Date(1_550_000_000_125 + i * 1000))
  }
  const dirs = ['src/deep/er', 'src/deep', 'src', 'lib', 'emptydir']
  for (const [i, dir] of dirs.entries()) await setTimes(join(root, dir), 1_500_000_000_750 + i * 3_600_000)
  return big
}

/**
 * A child process that waits until `startAt` (ms since epoch), overwrites the first 32 MiB of
 * `file` with its own random bytes in 1 MiB writes, fsyncs, and prints the SHA-256 of what it
 * wrote with the times it started and finished.
 */
const OVERWRITER = `
  const fs = require('node:fs')
  const crypto = require('node:crypto')
  const [file, startAt] = process.argv.slice(1)
  const data = crypto.randomBytes(32 * 1024 * 1024)
  setTimeout(() => {
    const began = Date.now()
    const fd = fs.openSync(file, 'r+')
    for (let off = 0; off < data.length; off += 1048576) fs.writeSync(fd, data, off, 1048576, off)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    const hash = crypto.createHash('sha256').update(data).digest('hex')
    process.stdout.write(JSON.stringify({ hash, began, ended: Date.now() }) + '\\n')
  }, Math.max(0, Number(startAt) - Date.now()))
`

interface Overwrite { hash: string, began: number, ended: number }

async function overwrite (t: Test, file: string, startAt: number): Promise<Overwrite> {
  const r = await run(process.execPath, ['-e', OVERWRITER, file, String(startAt)])
  t.equal(r.code, 0, `the writer on ${file} exits 0 ${r.stderr}`)
  return JSON.parse(r.stdout) as Overwrite
}

/** The SHA-256 of the first 32 MiB of a file, and of the rest. */
async function halves (file: string): Promise<[string, string]> {
  const bytes = await readFile(file)
  return [sha(bytes.subarray(0, 32 * MiB)), sha(bytes.subarray(32 * MiB))]
}

t.test('a clone shows the snapshot exactly, shares its blocks, and two mounts of one store never see each other\'s writes', { timeout: 300_000 }, async t => {
  const m = await mountFresh(t)
  const big = await populate(t, m.mnt)
  const live = await settledCapture(m.mnt)
  t.equal(live.big.sha, sha(big), 'the 64 MiB file was written whole')
  t.same([live['src/a.txt'].nlink, live['lib/a-link'].inode, live['src/deep/er/a3'].inode], [3, 'lib/a-link', 'lib/a-link'],
    'three names of one inode in three directories')
  await ctlOk(t, m, ['create', 'base'])
  const snapshot = join(m.mnt, '.snapshots', 'base')
  t.same(await capture(snapshot), live, 'the snapshot shows the volume as it was')

  const sizeBefore = await storeSize(m)
  const cloned = await ctl(m, ['clone', 'base', 'copy'])
  t.equal(cloned.code, 0, `snapctl clone exits 0 ${cloned.stderr}`)
  t.equal(cloned.stdout, `created volume copy from snapshot base (${inodesOf(live)} inodes, every block shared)\n`,
    'clone says what it made, counting every inode of the snapshot')
  const growth = await storeSize(m) - sizeBefore
  t.ok(growth < RECORD_SLACK, `the store file grew by ${(growth / MiB).toFixed(2)} MiB for 64 MiB of data: no data was copied`)
  const listed = await volumes(t, m.store)
  t.hasStrict(listed.map(({ name, origin, status, snapshots }) => ({ name, origin, status, snapshots })), [
    { name: 'main', origin: null, status: 'ready', snapshots: 1 },
    { name: 'copy', origin: 'main@base', status: 'ready', snapshots: 0 }
  ], 'snapfs volumes lists the clone, ready, with the snapshot it came from')

  const clone = await mountVolume(t, m, 'copy', join(m.dir, 'clone-mnt'))
  t.same(await capture(clone.mnt), live, 'the clone shows every byte, mode, owner, time, xattr, symlink, the fifo and the hard links of the snapshot')

  // Both mounts at once: two writers overwrite the first half of the same shared file, one on
  // each volume, at the same moment, each with its own bytes.
  const startAt = Date.now() + 1000
  const [onOrigin, onClone] = await Promise.all([overwrite(t, join(m.mnt, 'big'), startAt), overwrite(t, join(clone.mnt, 'big'), startAt)])
  t.comment(`writers: origin ${onOrigin.began}..${onOrigin.ended}, clone ${onClone.began}..${onClone.ended}`)
  t.not(onOrigin.hash, onClone.hash, 'the two writers wrote different bytes')
  const tail = sha(big.subarray(32 * MiB))
  t.same(await halves(join(m.mnt, 'big')), [onOrigin.hash, tail], 'the origin holds its writer\'s bytes and the shared tail')
  t.same(await halves(join(clone.mnt, 'big')), [onClone.hash, tail], 'the clone holds its writer\'s bytes and the shared tail')
  t.same(await capture(snapshot), live, 'the snapshot is unchanged')
  t.same(without(await capture(m.mnt), 'big'), without(live, 'big'), 'everything else on the origin is unchanged')
  t.same(without(await capture(clone.mnt), 'big'), without(live, 'big'), 'everything else on the clone is unchanged')

  await writeFile(join(clone.mnt, 'only-in-clone'), 'clone\n')
  await writeFile(join(m.mnt, 'only-in-origin'), 'origin\n')
  t.same(await readdir(clone.mnt), [...live['.'].entries ?? [], 'only-in-clone'].sort(), 'a file created on the clone is not on the origin')
  t.same(await readdir(m.mnt), [...live['.'].entries ?? [], 'only-in-origin'].sort(), 'a file created on the origin is not on the clone')

  await clone.umount()
  t.equal(await m.umount(), 0, 'the origin\'s daemon exits with code 0 on umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check exits 0 ${check.stdout}${check.stderr}`)
  t.match(check.stdout, /^ok: /m, 'snapfs check says ok')

  const again = await m.remount()
  const cloneAgain = await mountVolume(t, again, 'copy', join(m.dir, 'clone-mnt'))
  t.same(await halves(join(again.mnt, 'big')), [onOrigin.hash, tail], 'after remounting, the origin still holds its bytes')
  t.same(await halves(join(cloneAgain.mnt, 'big')), [onClone.hash, tail], 'after remounting, the clone still holds its bytes')
  t.equal(sha(await readFile(join(again.mnt, '.snapshots', 'base', 'big'))), sha(big), 'and the snapshot the original ones')
})

t.test('a snapshot with a clone cannot be deleted until the clone is promoted; delete-volume frees the blocks only it held', { timeout: 300_000 }, async t => {
  const m = await mountFresh(t)
  const data = randomBytes(8 * MiB)
  await writeFile(join(m.mnt, 'data.bin'), data)
  await writeFile(join(m.mnt, 'notes.txt'), 'first\n')
  // Reads on a clone move access times as on any live volume (relatime): settled first.
  await settledCapture(m.mnt)
  await ctlOk(t, m, ['create', 'base'])
  await writeFile(join(m.mnt, 'extra.bin'), randomBytes(4 * MiB))
  await writeFile(join(m.mnt, 'notes.txt'), 'second\n')
  await ctlOk(t, m, ['create', 'later'])
  const baseTree = await capture(join(m.mnt, '.snapshots', 'base'))

  t.match(await ctlOk(t, m, ['clone', 'base', 'c1']), /^created volume c1 from snapshot base \(\d+ inodes, every block shared\)\n$/, 'c1 is cloned from base')
  const c2json = await ctlJson<{ volume: string, origin: string, records: number }>(t, m, ['clone', 'later', 'c2'])
  t.same(c2json, { volume: 'c2', origin: 'later', records: 4 }, 'clone --json: the volume, its origin and the inodes copied (root and three files)')
  t.hasStrict((await volumes(t, m.store)).map(({ name, origin, status }) => ({ name, origin, status })), [
    { name: 'main', origin: null, status: 'ready' },
    { name: 'c1', origin: 'main@base', status: 'ready' },
    { name: 'c2', origin: 'main@later', status: 'ready' }
  ], 'snapfs volumes shows each clone\'s origin')

  const refusedBase = await ctl(m, ['delete', 'base'])
  failsWithOneLine(t, refusedBase, /\bc1\b/, 'delete of a snapshot with a clone')
  t.notMatch(refusedBase.stderr, /\bc2\b/, 'the refusal names only the clone of that snapshot')
  failsWithOneLine(t, await ctl(m, ['delete', 'later']), /\bc2\b/, 'delete of the other cloned snapshot')
  t.same((await listSnapshots(t, m)).map(s => [s.name, s.status]), [['base', 'ready'], ['later', 'ready']], 'both snapshots are still there')
  t.same(await capture(join(m.mnt, '.snapshots', 'base')), baseTree, 'and base still reads the same')

  const c1Mnt = join(m.dir, 'c1-mnt')
  let c1 = await mountVolume(t, m, 'c1', c1Mnt)
  t.same(await capture(c1.mnt), baseTree, 'the clone shows base')
  const busy = await snapfs(['promote', m.store, 'c1'])
  t.equal(busy.code, 1, 'promote of a mounted clone exits 1')
  t.match(busy.stderr, /already mounted/, `and says it is mounted: ${busy.stderr.trim()}`)

  // Snapshots of the clone, on the clone's mount.
  await writeFile(join(c1.mnt, 'c1.txt'), 'made on c1\n')
  const changed = Buffer.from(data)
  changed.fill(0x5a, 0, MiB)
  const fh = await open(join(c1.mnt, 'data.bin'), 'r+')
  await fh.write(changed, 0, MiB, 0)
  await fh.close()
  await ctlAt(t, c1.mnt, ['create', 's1'])
  await writeFile(join(c1.mnt, 'c1.txt'), 'changed on c1\n')
  await ctlAt(t, c1.mnt, ['create', 's2'])
  const c1Snapshots = JSON.parse(await ctlAt(t, c1.mnt, ['list', '--json'])) as SnapshotInfo[]
  t.same(c1Snapshots.map(s => [s.name, s.status]), [['s1', 'ready'], ['s2', 'ready']], 'the clone lists its own snapshots')
  t.same((await listSnapshots(t, m)).map(s => s.name), ['base', 'later'], 'the origin\'s list is its own')
  t.same(await readdir(join(c1.mnt, '.snapshots')), ['s1', 's2'], 'the clone\'s .snapshots lists them')
  t.equal(await readFile(join(c1.mnt, '.snapshots', 's1', 'c1.txt'), 'utf8'), 'made on c1\n', 's1 shows the file as it was')
  t.equal(await readFile(join(c1.mnt, '.snapshots', 's2', 'c1.txt'), 'utf8'), 'changed on c1\n', 's2 shows it changed')
  t.equal(sha(await readFile(join(c1.mnt, '.snapshots', 's1', 'data.bin'))), sha(changed), 's1 shows the clone\'s change to a shared file')
  t.equal(sha(await readFile(join(m.mnt, '.snapshots', 'base', 'data.bin'))), sha(data), 'the origin snapshot keeps its bytes')
  t.equal(sha(await readFile(join(m.mnt, 'data.bin'))), sha(data), 'and so does the origin')
  await c1.umount()

  const promoted = await snapfs(['promote', m.store, 'c1'])
  t.equal(promoted.code, 0, `promote of the unmounted clone exits 0 ${promoted.stderr}`)
  t.equal(promoted.stdout, 'volume c1 no longer depends on a snapshot\n', 'promote says what it did')
  t.hasStrict(await volumeNamed(t, m.store, 'c1'), { origin: null, status: 'ready', snapshots: 2 }, 'the promoted clone has no origin and keeps its snapshots')
  const deleted = await ctl(m, ['delete', 'base'])
  t.equal(deleted.code, 0, `delete of the snapshot whose clone was promoted exits 0 ${deleted.stderr}`)
  t.match(deleted.stdout, /^deleted snapshot base \(freed .+\)\n$/, 'delete says what it freed')
  t.same((await listSnapshots(t, m)).map(s => s.name), ['later'], 'base is gone from the origin')

  c1 = await mountVolume(t, m, 'c1', c1Mnt)
  t.equal(sha(await readFile(join(c1.mnt, 'data.bin'))), sha(changed), 'the promoted clone still reads its data')
  t.equal(await readFile(join(c1.mnt, 'notes.txt'), 'utf8'), 'first\n', 'including what came from the deleted snapshot')
  t.equal(sha(await readFile(join(c1.mnt, '.snapshots', 's1', 'data.bin'))), sha(changed), 'and its snapshots read theirs')
  t.equal(await readFile(join(c1.mnt, '.snapshots', 's1', 'notes.txt'), 'utf8'), 'first\n', 'all of it')
  await c1.umount()

  // c2 writes 16 MiB that only it references, then is deleted.
  const c2 = await mountVolume(t, m, 'c2', join(m.dir, 'c2-mnt'))
  await writeFile(join(c2.mnt, 'exclusive.bin'), randomBytes(16 * MiB))
  await c2.umount()
  const c2Listed = await volumeNamed(t, m.store, 'c2')
  t.ok((c2Listed?.used ?? 0) >= 28 * MiB, `c2 uses its 16 MiB and the 12 MiB it shares (${c2Listed?.used ?? 'not listed'})`)
  t.equal(await m.umount(), 0, 'the origin\'s daemon exits with code 0 on umount')
  const before = await checkStore(t, m.store, 'with c2')
  const removed = await snapfs(['delete-volume', m.store, 'c2'])
  t.equal(removed.code, 0, `delete-volume exits 0 ${removed.stderr}`)
  t.equal(removed.stdout, 'deleted volume c2\n', 'delete-volume says what it did')
  t.same((await volumes(t, m.store)).map(v => v.name), ['main', 'c1'], 'c2 is no longer listed')
  const after = await checkStore(t, m.store, 'after delete-volume')
  t.equal(after.blocks, before.blocks - 16 * MiB / BLOCK, 'exactly the blocks only c2 referenced were freed')

  const again = await m.remount()
  const sizeBefore = await storeSize(again)
  await writeFile(join(again.mnt, 'reuses.bin'), randomBytes(16 * MiB))
  await run('sync', [])
  const growth = await storeSize(again) - sizeBefore
  t.ok(growth < 8 * MiB, `16 MiB written after delete-volume grew the store file by ${(growth / MiB).toFixed(2)} MiB: freed pages are reused`)
  const laterDeleted = await ctl(again, ['delete', 'later'])
  t.equal(laterDeleted.code, 0, `with c2 deleted, its origin snapshot can be deleted ${laterDeleted.stderr}`)
  t.same(await listSnapshots(t, again), [], 'the origin has no snapshot left')
  t.equal(await again.umount(), 0, 'the origin\'s daemon exits with code 0 on umount')
  await checkStore(t, m.store, 'at the end')
})

const FILES = 6_000
const DIRS = 100

/** The bytes of small file `i` of the many-files tree: unique, from 8 bytes to a few hundred. */
function smallContent (i: number): Buffer {
  return Buffer.from(`file ${i}\n`.repeat(1 + (i % 40)))
}

function smallPath (root: string, i: number): string {
  return join(root, 'many', `d${String(i % DIRS).padStart(3, '0')}`, `f${String(i).padStart(5, '0')}`)
}

/** Every path under `root`, sorted, with a trailing slash on directories. */
async function pathsUnder (root: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const d of await readdir(join(root, rel), { withFileTypes: true })) {
      const path = rel === '' ? d.name : `${rel}/${d.name}`
      out.push(d.isDirectory() ? `${path}/` : path)
      if (d.isDirectory()) await walk(path)
    }
  }
  await walk('')
  return out.sort()
}

t.test('a clone cut by kill -9 of the origin\'s daemon is finished by the next mount of the origin', { timeout: 480_000 }, async t => {
  const m = await mountFresh(t)
  for (let d = 0; d < DIRS; d++) await mkdir(join(m.mnt, 'many', `d${String(d).padStart(3, '0')}`), { recursive: true })
  let next = 0
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < FILES) {
      const i = next++
      await writeFile(smallPath(m.mnt, i), smallContent(i))
    }
  }))
  await ctlOk(t, m, ['create', 'many'])
  const expected = await pathsUnder(join(m.mnt, '.snapshots', 'many'))
  t.equal(expected.filter(p => !p.endsWith('/')).length, FILES, `the snapshot holds the ${FILES} files`)

  const started = await ctl(m, ['clone', 'many', 'big', '--no-wait'])
  await m.kill9()
  t.equal(started.code, 0, `clone --no-wait exits 0 ${started.stderr}`)
  t.equal(started.stdout, 'creating volume big from snapshot many in the background\n', 'clone --no-wait says the copy goes on in the background')
  t.hasStrict(await volumeNamed(t, m.store, 'big'), { origin: 'main@many', status: 'cloning' }, 'after kill -9 of the origin\'s daemon, the clone is listed as cloning')
  const cloneMnt = join(m.dir, 'clone-mnt')
  const refused = await tryMountVolume(t, m, 'big', cloneMnt)
  t.not(refused.r.code, 0, 'mounting a clone still being copied fails')
  t.match(refused.r.stderr, /still being cloned/, `and says why: ${refused.r.stderr.trim()}`)
  t.same(await mountsAt(cloneMnt), [], 'nothing is mounted there')
  const info = await snapfs(['info', m.store, '--json'])
  const copied = (JSON.parse(info.stdout) as { volumes: Array<{ name: string, inodes: number }> }).volumes.find(v => v.name === 'big')?.inodes
  t.comment(`the copy was cut with ${copied ?? '?'} of ${expected.length + 1} inodes copied`)
  await checkStore(t, m.store, 'with the copy cut halfway')

  const again = await m.remount()
  const deadline = Date.now() + 240_000
  let status = await statusOf(m.store, 'big')
  while (status === 'cloning' && Date.now() < deadline) {
    await sleep(250)
    status = await statusOf(m.store, 'big')
  }
  t.equal(status, 'ready', 'the remounted origin finishes the copy by itself')

  const clone = await mountVolume(t, again, 'big', cloneMnt)
  t.same(await pathsUnder(clone.mnt), expected, 'the clone holds every directory and file of the snapshot')
  const differing: number[] = []
  for (let i = 0; i < FILES; i += 97) {
    if (sha(await readFile(smallPath(clone.mnt, i))) !== sha(smallContent(i))) differing.push(i)
  }
  t.same(differing, [], `a sample of ${Math.ceil(FILES / 97)} files of the clone reads the bytes written`)
  t.equal(sha(await readFile(smallPath(clone.mnt, FILES - 1))), sha(await readFile(smallPath(join(again.mnt, '.snapshots', 'many'), FILES - 1))),
    'the last file reads as in the snapshot')
  await clone.umount()
  t.equal(await again.umount(), 0, 'the origin\'s daemon exits with code 0 on umount')
  await checkStore(t, m.store, 'after the resumed copy')
})
