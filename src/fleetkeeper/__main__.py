from fleetkeeper.cli import main

main()
