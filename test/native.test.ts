/**
 * The native transport (src/fuse/lowlevel/) serving real snapfs mounts, proven by what a program
 * on the mount sees:
 * - small writes reach the daemon through the writeback cache, gathered in 1 MiB requests, and
 *   read back byte-identical, also after a remount, where a cold read comes in 1 MiB requests;
 * - new files, directories, symlinks and fifos belong to the caller, with a set-group-ID
 *   directory's group (and its S_ISGID on new subdirectories);
 * - times keep their nanoseconds, across a remount and in a snapshot;
 * - a snapshot's files have 64-bit inode numbers of their own, shared by their hard links, the
 *   same in readdir as in stat;
 * - renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE work, and fail with the right errno;
 * - the daemon counts the kernel's lookups and forgets (`snapctl status`: kernelNodes);
 * - the daemon's own changes (rollback, restore, snapshot delete and create) reach the kernel's
 *   caches of names and attributes at once. The kernel keeps both for 1 s, so these commands go
 *   through the package API, in this process (snapctl would spend a node start-up of that
 *   second), and every check follows the command directly.
 * Cases that remount or roll back have a mount of their own; the others share one, each in its
 * own directory with its own snapshot names. The whole file is skipped when the run's daemons
 * use fuse-native.
 */
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { chmod, chown, link, lstat, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createSnapshot, deleteSnapshot, mountStatus, restoreFromSnapshot, rollbackToSnapshot } from '../dist/src/index.js'
import { ctlJson, ctlOk, umountAndCheck } from './helpers/ctl.js'
import { TRANSPORT, errnoOf, mountFresh, renameat2, run, sha, scratchDir, type Mounted } from './helpers/mount.js'
import type { MountStatus } from '../src/control/protocol.js'

const MiB = 1024 * 1024
/** The largest write the daemon asks the kernel for (max_write). */
const MAX_WRITE = MiB
const NS_PER_S = 1_000_000_000n
const ABOVE_32_BITS = 2n ** 32n

/** renameat2(2)'s flags. */
const RENAME_NOREPLACE = 1
const RENAME_EXCHANGE = 2

/** The caller of the credential case: a user and group the mount has never seen. */
const USER = 1234
const GROUP = 2345
/** The group of the set-group-ID directory, which the caller is not a member of. */
const SGID_GROUP = 777

/** Files the forget case creates; the kernel must hold at least as many nodes after stat'ing them. */
const MANY = 2000
/** Nodes the kernel may still hold once the caches are dropped (roots, open directories). */
const FEW = 100
const FORGET_WAIT_MS = 10_000

const snapshotOf = (m: Mounted, name: string, ...path: string[]): string => join(m.mnt, '.snapshots', name, ...path)

/** The nodes the kernel holds lookups of, as the daemon counts them (polled: the API, in this process). */
async function kernelNodes (m: Mounted): Promise<number> {
  return (await mountStatus(m.mnt)).kernelNodes ?? -1
}

/**
 * A shell command as USER:GROUP with no supplementary groups, which must succeed. setpriv
 * (util-linux) is there: the mount helper starts every daemon through it.
 */
async function asUser (t: Test, script: string): Promise<void> {
  const r = await run('setpriv', [`--reuid=${USER}`, `--regid=${GROUP}`, '--clear-groups', '--', 'sh', '-c', script])
  t.equal(r.code, 0, `as ${USER}:${GROUP}: ${script} ${r.stderr}`)
}

/** The inode number readdir gives for each name in `dir` (d_ino, without a stat: python's scandir). */
async function direntInos (dir: string): Promise<Map<string, bigint>> {
  const script = 'import os, sys\nfor e in os.scandir(sys.argv[1]): print(e.inode(), e.name)'
  const r = await run('python3', ['-c', script, dir])
  if (r.code !== 0) throw new Error(`python3 scandir: ${r.stderr}`)
  const inos = new Map<string, bigint>()
  for (const line of r.stdout.trimEnd().split('\n')) {
    const space = line.indexOf(' ')
    inos.set(line.slice(space + 1), BigInt(line.slice(0, space)))
  }
  return inos
}

const inoOf = async (path: string): Promise<bigint> => (await stat(path, { bigint: true })).ino

/** A file's [mtime, atime] in nanoseconds. */
async function timesNs (path: string): Promise<[bigint, bigint]> {
  const st = await stat(path, { bigint: true })
  return [st.mtimeNs, st.atimeNs]
}

/** The errno code of a rejected fs call, or what it resolved to: for checks that must not throw. */
const orCode = <T>(p: Promise<T>): Promise<T | string | undefined> => p.catch((err: NodeJS.ErrnoException) => err.code)

// Every daemon of a run uses TRANSPORT (SNAPFS_TRANSPORT); these cases prove the native one.
if (TRANSPORT === 'fuse-native' || process.env.SNAPFS_TEST_TRANSPORT === 'fuse-native') {
  t.plan(0, 'needs the native transport')
} else {
  t.setTimeout(2 * 60_000)
  nativeCases()
}

function nativeCases (): void {
  let shared: Mounted
  t.before(async () => { shared = await mountFresh(t) })

  t.test('small writes reach the daemon through the writeback cache in 1 MiB requests and read back byte-identical, read in 1 MiB requests', { timeout: 30_000 }, async t => {
    const m = await mountFresh(t)
    const file = join(m.mnt, 'random')
    const bytes = randomBytes(16 * MiB)
    // Outside the mount; dd copies it in 4 KiB writes, which only the writeback cache turns into
    // 1 MiB requests (without it each write is one request of its own).
    const source = join(m.dir, 'random-source')
    await writeFile(source, bytes)
    const dd = await run('dd', [`if=${source}`, `of=${file}`, 'bs=4k', 'conv=fsync'])
    t.equal(dd.code, 0, `dd bs=4k conv=fsync of 16 MiB ${dd.code === 0 ? '' : dd.stderr}`)

    const seen = await ctlJson<MountStatus>(t, m, ['status'])
    t.equal(seen.transport, 'native', 'snapctl status names the native transport')
    t.equal(seen.largestWrite, MAX_WRITE, 'the kernel gathered the 4 KiB writes in its cache and sent them in 1 MiB requests')
    t.equal((await stat(file)).size, bytes.length, 'the file has all 16 MiB')
    t.equal(sha(await readFile(file)), sha(bytes), 'and reads back byte-identical')

    t.equal(await m.umount(), 0, 'the daemon exits with code 0 on umount')
    const again = await m.remount()
    t.equal(sha(await readFile(join(again.mnt, 'random'))), sha(bytes), 'after a remount, read from the store: identical')
    // The daemon raised the mount's read-ahead to the write size: a sequential read of a file
    // not in the kernel's cache arrives in 1 MiB requests (128 KiB at the kernel's default).
    t.equal((await ctlJson<MountStatus>(t, again, ['status'])).largestRead, MAX_WRITE, 'and the kernel read it in 1 MiB requests')
  })

  t.test('new inodes belong to the caller, with a set-group-ID directory\'s group', { timeout: 20_000 }, async t => {
    const sticky = await scratchDir(shared, 'owners')
    await chmod(sticky, 0o1777)
    await asUser(t, `cd '${sticky}' && touch file && mkdir dir && ln -s file link && mkfifo fifo`)
    for (const [name, isKind] of [['file', 'isFile'], ['dir', 'isDirectory'], ['link', 'isSymbolicLink'], ['fifo', 'isFIFO']] as const) {
      const st = await lstat(join(sticky, name))
      t.ok(st[isKind](), `${name}: ${isKind}`)
      t.same([st.uid, st.gid], [USER, GROUP], `the ${name} belongs to ${USER}:${GROUP}`)
    }

    const sgid = await scratchDir(shared, 'owners-sgid')
    await chown(sgid, 0, SGID_GROUP)
    await chmod(sgid, 0o2777)
    t.equal((await stat(sgid)).mode & 0o7777, 0o2777, 'the directory is set-group-ID')
    await asUser(t, `cd '${sgid}' && touch file && mkdir sub`)
    const file = await lstat(join(sgid, 'file'))
    t.same([file.uid, file.gid], [USER, SGID_GROUP], 'a new file there takes the directory\'s group')
    const sub = await lstat(join(sgid, 'sub'))
    t.same([sub.uid, sub.gid], [USER, SGID_GROUP], 'a new subdirectory takes the directory\'s group')
    t.equal(sub.mode & 0o2000, 0o2000, 'and its set-group-ID bit')

    const mine = join(sticky, 'made-by-root')
    await writeFile(mine, 'made by root\n')
    const st = await lstat(mine)
    t.same([st.uid, st.gid], [0, 0], 'a file made by root belongs to 0:0')
  })

  t.test('times keep their nanoseconds, across a remount and in a snapshot', { timeout: 30_000 }, async t => {
    const m = await mountFresh(t)
    const file = join(m.mnt, 'timed')
    await writeFile(file, 'timed\n')
    // Nothing reads the file from here on: a read could move its access time (relatime).
    for (const [flag, when] of [['-m', '2021-03-04 05:06:07.123456789 UTC'], ['-a', '2020-01-02 03:04:05.987654321 UTC']]) {
      const touched = await run('touch', [flag, '-d', when, file])
      t.equal(touched.code, 0, `touch ${flag} -d '${when}' ${touched.stderr}`)
    }
    const mtime = BigInt(Date.UTC(2021, 2, 4, 5, 6, 7)) * 1_000_000n + 123_456_789n
    const atime = BigInt(Date.UTC(2020, 0, 2, 3, 4, 5)) * 1_000_000n + 987_654_321n
    const shown = await run('stat', ['-c', '%y|%x', file])
    t.match(shown.stdout, /^\S+ \S+\.123456789 \S+\|\S+ \S+\.987654321 \S+\n$/, `stat shows the nanoseconds (${shown.stdout.trim()})`)
    const [m1, a1] = await timesNs(file)
    t.equal(m1 % NS_PER_S, 123_456_789n, 'mtime: .123456789 s')
    t.equal(a1 % NS_PER_S, 987_654_321n, 'atime: .987654321 s')
    t.same([m1, a1], [mtime, atime], 'both times, to the nanosecond')

    await ctlOk(t, m, ['create', 's1'])
    t.same(await timesNs(snapshotOf(m, 's1', 'timed')), [mtime, atime], 'the snapshot shows both times to the nanosecond')

    t.equal(await m.umount(), 0, 'the daemon exits with code 0 on umount')
    const again = await m.remount()
    t.same(await timesNs(join(again.mnt, 'timed')), [mtime, atime], 'after a remount, to the nanosecond')
    t.same(await timesNs(snapshotOf(again, 's1', 'timed')), [mtime, atime], 'in the snapshot too')
  })

  t.test('a snapshot\'s files have 64-bit inode numbers of their own, shared by hard links, the same in readdir', { timeout: 20_000 }, async t => {
    const m = shared
    const dir = await scratchDir(m, 'inos')
    await writeFile(join(dir, 'a'), 'one inode, two names\n')
    await link(join(dir, 'a'), join(dir, 'b'))
    await ctlOk(t, m, ['create', 'inos-1'])
    await ctlOk(t, m, ['create', 'inos-2'])

    const live = await inoOf(join(dir, 'a'))
    const first = await inoOf(snapshotOf(m, 'inos-1', 'inos', 'a'))
    t.ok(first > ABOVE_32_BITS, `a snapshot's st_ino ${first} is above 2^32`)
    t.not(first, live, `and not the live file's (${live})`)
    t.equal(await inoOf(snapshotOf(m, 'inos-1', 'inos', 'b')), first, 'the hard link in the snapshot has the same st_ino')
    const second = await inoOf(snapshotOf(m, 'inos-2', 'inos', 'a'))
    t.ok(second > ABOVE_32_BITS, `the second snapshot's st_ino ${second} is above 2^32`)
    t.not(second, first, 'another snapshot gives the same file another st_ino')
    t.not(second, live, 'and not the live one')

    const listed = await direntInos(snapshotOf(m, 'inos-1', 'inos'))
    t.same([listed.get('a'), listed.get('b')], [first, first], 'readdir gives both names the st_ino stat gives')
    const roots = await direntInos(join(m.mnt, '.snapshots'))
    t.equal(roots.get('inos-1'), await inoOf(snapshotOf(m, 'inos-1')), 'a snapshot\'s root: readdir of .snapshots and stat agree')
    t.equal((await direntInos(dir)).get('a'), live, 'a live file: readdir and stat agree')
  })

  t.test('renameat2: NOREPLACE refuses an existing name, EXCHANGE swaps a file and a directory, kept after a remount', { timeout: 30_000 }, async t => {
    const m = await mountFresh(t)
    const plain = await scratchDir(m, 'plain')
    const [p, q, r] = ['p', 'q', 'r'].map(name => join(plain, name))
    await writeFile(p, 'p\n')
    await writeFile(q, 'q\n')
    t.equal(await renameat2(p, q, RENAME_NOREPLACE), 'EEXIST', 'NOREPLACE onto an existing name fails with EEXIST')
    t.same([await readFile(p, 'utf8'), await readFile(q, 'utf8')], ['p\n', 'q\n'], 'and changes nothing')
    t.equal(await renameat2(p, r, RENAME_NOREPLACE), 'ok', 'NOREPLACE onto a free name renames')
    t.equal(await errnoOf(() => stat(p)), 'ENOENT', 'the old name is gone')
    t.equal(await readFile(r, 'utf8'), 'p\n', 'the new name has the file')

    const x = join(await scratchDir(m, 'left'), 'x')
    const y = join(await scratchDir(m, 'right'), 'y')
    await writeFile(x, 'x was a file\n')
    await mkdir(y)
    await writeFile(join(y, 'inner'), 'inside y\n')
    const [xIno, yIno] = [(await stat(x)).ino, (await stat(y)).ino]
    t.same([(await stat(join(m.mnt, 'left'))).nlink, (await stat(join(m.mnt, 'right'))).nlink], [2, 3],
      'before: left holds a file (nlink 2), right a directory (nlink 3)')
    t.equal(await renameat2(x, y, RENAME_EXCHANGE), 'ok', 'EXCHANGE of a file and a directory in two directories')
    const swapped = async (t: Test, at: Mounted): Promise<void> => {
      const [nowX, nowY] = [join(at.mnt, 'left', 'x'), join(at.mnt, 'right', 'y')]
      const [sx, sy] = [await lstat(nowX), await lstat(nowY)]
      t.ok(sx.isDirectory() && sy.isFile(), 'left/x is the directory, right/y the file')
      t.same([sx.ino, sy.ino], [yIno, xIno], 'each name holds the other\'s inode')
      t.same(await readdir(nowX), ['inner'], 'the directory kept its entries')
      t.equal(await readFile(join(nowX, 'inner'), 'utf8'), 'inside y\n', 'and their bytes')
      t.equal(await readFile(nowY, 'utf8'), 'x was a file\n', 'the file kept its bytes')
      t.same([(await stat(join(at.mnt, 'left'))).nlink, (await stat(join(at.mnt, 'right'))).nlink], [3, 2],
        'the parent that gained the directory has one link more, the other one less')
    }
    await swapped(t, m)
    t.equal(await renameat2(x, join(m.mnt, 'right', 'missing'), RENAME_EXCHANGE), 'ENOENT', 'EXCHANGE with a missing name fails with ENOENT')
    t.equal(await renameat2(r, q, RENAME_NOREPLACE | RENAME_EXCHANGE), 'EINVAL', 'NOREPLACE with EXCHANGE is EINVAL')
    t.same([await readFile(r, 'utf8'), await readFile(q, 'utf8')], ['p\n', 'q\n'], 'the refused renames changed nothing')

    await umountAndCheck(t, m)
    const again = await m.remount()
    await swapped(t, again)
    t.same((await readdir(join(again.mnt, 'plain'))).sort(), ['q', 'r'], 'the renamed file stays renamed')
  })

  t.test('the daemon counts the kernel\'s lookups and forgets: dropped caches forget the nodes, stats look them up again', { timeout: 40_000 }, async t => {
    const dir = await scratchDir(shared, 'many')
    const names = Array.from({ length: MANY }, (_, i) => join(dir, `f${i}`))
    const inBatches = async <T>(each: (name: string, i: number) => Promise<T>): Promise<T[]> => {
      const results: T[] = []
      for (let i = 0; i < MANY; i += 100) results.push(...await Promise.all(names.slice(i, i + 100).map(async (name, j) => await each(name, i + j))))
      return results
    }
    const statAll = async (): Promise<number> => (await inBatches(async name => await stat(name))).filter(st => st.isFile()).length
    await inBatches(async (name, i) => { await writeFile(name, `file ${i}\n`) })
    t.equal(await statAll(), MANY, `all ${MANY} files stat`)
    const held = await kernelNodes(shared)
    t.ok(held >= MANY, `the kernel holds at least ${MANY} nodes (kernelNodes ${held})`)

    const dropped = await run('sh', ['-c', 'sync && echo 2 > /proc/sys/vm/drop_caches'])
    t.equal(dropped.code, 0, `sync; echo 2 > /proc/sys/vm/drop_caches ${dropped.stderr}`)
    let left = held
    for (const deadline = Date.now() + FORGET_WAIT_MS; left >= FEW && Date.now() < deadline; await sleep(100)) left = await kernelNodes(shared)
    t.ok(left >= 0 && left < FEW, `the kernel forgot them: kernelNodes fell to ${left}`)

    t.equal(await statAll(), MANY, 'every file stats again')
    for (const i of [0, 1, 999, 1500, MANY - 1]) t.equal(await readFile(names[i], 'utf8'), `file ${i}\n`, `f${i} reads its bytes`)
    const again = await kernelNodes(shared)
    t.ok(again >= MANY, `looked up again, the kernel holds them again (kernelNodes ${again})`)
  })

  t.test('after a rollback the kernel shows the snapshot at once: a size, bytes, a file turned back into a directory', { timeout: 20_000 }, async t => {
    const m = await mountFresh(t)
    const f = join(m.mnt, 'f')
    const d = join(m.mnt, 'd')
    await writeFile(f, 'at s1')
    await mkdir(d)
    await writeFile(join(d, 'inner'), 'inner at s1\n')
    await ctlOk(t, m, ['create', 's1'])

    await writeFile(f, Buffer.alloc(1000, 0x61))
    await rm(d, { recursive: true })
    await writeFile(d, 'd is a file now\n')
    t.same([(await stat(f)).size, (await stat(d)).isFile()], [1000, true], 'before: the kernel holds the new size and a file d')
    t.same((await readdir(m.mnt)).sort(), ['d', 'f'], 'and the root\'s listing')

    await rollbackToSnapshot(m.mnt, 's1', { safetySnapshot: false })
    t.equal((await stat(f)).size, 5, 'f has its size at s1 again')
    t.equal(await readFile(f, 'utf8'), 'at s1', 'and its bytes')
    const sd = await orCode(stat(d))
    t.ok(typeof sd === 'object' && sd.isDirectory(), `d is a directory again (${typeof sd === 'string' ? sd : 'stat answers'})`)
    t.same(await orCode(readdir(d)), ['inner'], 'its listing works')
    t.equal(await orCode(readFile(join(d, 'inner'), 'utf8')), 'inner at s1\n', 'and its file reads')
    t.same((await readdir(m.mnt)).sort(), (await readdir(snapshotOf(m, 's1'))).sort(), 'the root lists exactly the names of s1')
  })

  t.test('after a restore over one name of two, the kernel shows one link each at once', { timeout: 20_000 }, async t => {
    const dir = await scratchDir(shared, 'restore')
    const [h1, h2] = [join(dir, 'h1'), join(dir, 'h2')]
    await writeFile(h1, 'at the snapshot\n')
    await link(h1, h2)
    await ctlOk(t, shared, ['create', 'restore-1'])
    await writeFile(h1, 'written after the snapshot\n')
    t.same([(await stat(h1)).nlink, (await stat(h2)).nlink], [2, 2], 'before: the kernel holds nlink 2 for both names')

    await restoreFromSnapshot(shared.mnt, 'restore-1', '/restore/h1')
    // Attributes first: opening a file for a read refreshes them whatever the invalidations did.
    t.equal((await stat(h2)).nlink, 1, 'h2 has one link')
    t.equal((await stat(h1)).nlink, 1, 'h1 has one link')
    t.not(await inoOf(h1), await inoOf(h2), 'they are two inodes')
    t.equal(await readFile(h1, 'utf8'), 'at the snapshot\n', 'h1 reads what it held at the snapshot')
    t.equal(await readFile(h2, 'utf8'), 'written after the snapshot\n', 'h2 keeps the live bytes')
  })

  t.test('a deleted snapshot is gone from .snapshots at once, and one made again under its name shows the new state', { timeout: 20_000 }, async t => {
    const dir = await scratchDir(shared, 'remade')
    await writeFile(join(dir, 'f'), 'first\n')
    await ctlOk(t, shared, ['create', 'remade'])
    const inSnapshot = snapshotOf(shared, 'remade', 'remade', 'f')
    t.equal((await stat(inSnapshot)).size, 6, 'the kernel holds the snapshot\'s file')
    t.equal(await readFile(inSnapshot, 'utf8'), 'first\n', 'and its pages')

    await writeFile(join(dir, 'f'), 'second, longer\n')
    await deleteSnapshot(shared.mnt, 'remade')
    t.equal(await errnoOf(() => stat(snapshotOf(shared, 'remade'))), 'ENOENT', 'the snapshot is gone from .snapshots')
    t.equal(await errnoOf(() => stat(inSnapshot)), 'ENOENT', 'and its file with it')

    await createSnapshot(shared.mnt, 'remade')
    t.equal((await stat(inSnapshot)).size, 15, 'the new snapshot\'s file has the new size')
    t.equal(await readFile(inSnapshot, 'utf8'), 'second, longer\n', 'and the new bytes')
  })
}
