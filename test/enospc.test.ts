/**
 * A full disk: when the store's disk fills up, the writer gets ENOSPC (not a dead mount), the
 * daemon keeps serving, an unmount that cannot commit what the daemon holds says so and leaves
 * the mount up (`--force` unmounts without it and says so), deleting a file makes room for the
 * very next write, and the store stays consistent
 * (`snapfs check` passes, the data written after the failure reads back after a remount).
 * The store lives on a small ext4 image mounted through a loop device.
 */
import t from 'tap'
import { mkdtemp, rm, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { mountsAt, pidsMentioning, run, snapfs } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

t.test('a full disk gives the writer ENOSPC and loses nothing', async t => {
  const dir = await mkdtemp('/var/tmp/snapfs-enospc-')
  const image = join(dir, 'disk.img')
  const disk = join(dir, 'disk')
  const store = join(disk, 'store')
  const mnt = join(dir, 'mnt')
  await mkdir(disk)
  t.teardown(async () => {
    await snapfs(['umount', '--force', mnt])
    // The daemon answers the unmount just before it exits; until then its map of the store
    // keeps the image's file system busy.
    for (let waited = 0; (await pidsMentioning(store)).length > 0 && waited < 10_000; waited += 50) await sleep(50)
    await run('umount', [disk])
    await rm(dir, { recursive: true, force: true })
  })
  t.equal((await run('truncate', ['-s', '96M', image])).code, 0, 'image made')
  t.equal((await run('mkfs.ext4', ['-q', image])).code, 0, 'ext4 made')
  t.equal((await run('mount', ['-o', 'loop', image, disk])).code, 0, 'image mounted')
  t.equal((await snapfs(['init', store])).code, 0, 'store made')
  const mount = await snapfs(['mount', store, mnt, '--cache-size', '16M', '--dirty-age', '60s'])
  t.equal(mount.code, 0, mount.stderr)

  const flood = await run('dd', ['if=/dev/urandom', `of=${join(mnt, 'flood')}`, 'bs=1M', 'count=150', 'conv=fsync'])
  t.not(flood.code, 0, 'the flood fails')
  t.match(flood.stderr, /No space left on device/, 'with ENOSPC')
  t.notMatch(flood.stderr, /Transport endpoint is not connected/, 'and the mount is alive')

  const refused = await snapfs(['umount', mnt])
  t.equal(refused.code, 1, 'an unmount that cannot commit what the daemon holds fails')
  t.match(refused.stderr, /^snapfs: cannot unmount .*full.*make room[^\n]*\n$/, 'with one line saying why and what to do')
  t.same(await readdir(mnt), ['flood'], 'the mount stays up')

  // Three quarters of what the flood got into the store, written straight after the delete with
  // no fsync between (the dirty age is 60 s, so no timer commits the delete meanwhile): a commit
  // cannot reuse the pages it frees itself, so this fits only because on a full disk the delete
  // is committed at once, on its own.
  const stored = (await stat(join(mnt, 'flood'))).blocks * 512
  await rm(join(mnt, 'flood'))
  const data = randomBytes(Math.floor(stored * 3 / 4))
  t.ok(data.length >= 16 * 1024 * 1024, `${data.length} bytes to write after the delete`)
  await writeFile(join(mnt, 'after'), data)
  t.same(await readFile(join(mnt, 'after')), data, 'room again after the delete')

  const umount = await snapfs(['umount', mnt])
  t.equal(umount.code, 0, umount.stderr)
  const check = await snapfs(['check', store])
  t.equal(check.code, 0, check.stdout)
  t.match(check.stdout, /^ok:/m, 'the store is consistent')
  t.equal((await snapfs(['mount', store, mnt, '--cache-size', '16M', '--dirty-age', '60s'])).code, 0, 'remounted')
  t.same(await readFile(join(mnt, 'after')), data, 'the data written after the failure is there')

  const again = await run('dd', ['if=/dev/urandom', `of=${join(mnt, 'flood')}`, 'bs=1M', 'count=150', 'conv=fsync'])
  t.match(again.stderr, /No space left on device/, 'a second flood fills the disk again')
  const forced = await snapfs(['umount', '--force', mnt])
  t.equal(forced.code, 0, 'umount --force unmounts all the same')
  t.match(forced.stderr, /unmounted without the changes the daemon could not commit/, 'and says what was lost')
  t.same(await mountsAt(mnt), [], 'nothing is mounted any more')
  const after = await snapfs(['check', store])
  t.match(after.stdout, /^ok:/m, 'the store is consistent')
  t.equal((await snapfs(['mount', store, mnt])).code, 0, 'remounted')
  t.same(await readFile(join(mnt, 'after')), data, 'what was committed before is there')
})
